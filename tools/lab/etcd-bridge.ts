// The agent runs inside a test network namespace, etcd on the host's loopback. A unix socket
// crosses the namespace boundary (network namespaces do not isolate the filesystem): socat in
// the namespace listens on its 127.0.0.1 and forwards to the socket; socat on the host forwards
// the socket to etcd (or to a fault proxy in front of it). cut() and mend() kill and restart
// the host side, a blunt partition.
import fs from 'node:fs';
import path from 'node:path';
import { freePort } from './etcd.js';
import { atExit } from './exit.js';
import type { Side, Testbed } from './netns.js';
import { BIN, Proc, waitFor } from './proc.js';

export class EtcdBridge {
  private hostSide: Proc | undefined;
  private constructor(
    readonly url: string,
    private readonly sock: string,
    private readonly target: number,
    private readonly logDir: string,
  ) {}

  static async start(tb: Testbed, side: Side, targetPort: number): Promise<EtcdBridge> {
    const dir = tb.tempDir('etcd-bridge');
    const sock = path.join(dir, 'etcd.sock');
    const port = await freePort();
    const b = new EtcdBridge(`http://127.0.0.1:${port}`, sock, targetPort, dir);
    b.mend();
    // A process that ends without destroy() (a crash, an exit from a signal) must not leave the
    // host-side socat running: it lives outside the bed's namespaces, so the bed's sweep misses it.
    atExit(() => b.close());
    tb.spawn(side, `etcd-bridge-${port}`, BIN.socat, [`TCP-LISTEN:${port},bind=127.0.0.1,fork,reuseaddr`, `UNIX-CONNECT:${sock}`]);
    tb.onDestroy(() => b.close());
    await waitFor('the bridge socket', () => fs.existsSync(sock), { timeoutMs: 5000 });
    return b;
  }

  /** Stop forwarding: open connections die, new ones are refused. */
  cut(): void {
    this.hostSide?.killNow();
    this.hostSide = undefined;
    fs.rmSync(this.sock, { force: true });
  }

  mend(): void {
    if (this.hostSide?.running) return;
    fs.rmSync(this.sock, { force: true });
    this.hostSide = Proc.start(
      'etcd-bridge-host',
      BIN.socat,
      [`UNIX-LISTEN:${this.sock},fork,mode=600`, `TCP:127.0.0.1:${this.target}`],
      path.join(this.logDir, 'host.log'),
    );
  }

  close(): void {
    this.cut();
  }
}
