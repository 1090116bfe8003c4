// Run inside a test namespace by self.test.ts: a process that opens a plaintext connection, then
// becomes an agent (the agent's own start sequence: load, claim, seed, apply active, attach,
// seed), then keeps writing on that connection. It prints one JSON report line.
// Arguments: bpffs iface host port.
import net from 'node:net';
import pino from 'pino';
import { applyConfig, claimSelf } from '../../agent/apply.js';
import { Datapath } from '../../agent/datapath.js';
import { seedOwnFlows, selfProtection } from '../../agent/self.js';
import { ConfigSchema } from '../../schemas/config.js';

const [bpffs, iface, host, port] = process.argv.slice(2) as [string, string, string, string];
const log = pino({ level: 'silent' });
const sock = net.connect(Number(port), host);
let error: string | undefined;
sock.on('error', (err) => (error = err.message));
await new Promise<void>((resolve, reject) => {
  sock.once('connect', resolve);
  sock.once('error', reject);
});
sock.write('opened before the filter was attached\n');

const dp = Datapath.load(bpffs, log);
const self = selfProtection(undefined, [`http://${host}:${port}`]);
claimSelf(dp.maps, self);
const seedMs: number[] = [];
const seed = (reason: string) => {
  const t0 = performance.now();
  const n = seedOwnFlows(dp, self, log, reason);
  seedMs.push(performance.now() - t0);
  return n;
};
const seeded = [seed('load')];
seeded.push(seed('apply'));
applyConfig(dp.maps, ConfigSchema.parse({ mode: 'active' }), null, self);
dp.attachInterface(iface, log);
seeded.push(seed('attach'));
// Blocked sockets are destroyed as the agent does after an apply in active mode: ours must not be.
const destroyed = dp.destroyBlockedSockets();

let linesSent = 0;
for (let i = 0; i < 20 && !error; i++) {
  await new Promise<void>((resolve) => sock.write(`plaintext line ${i}\n`, () => resolve()));
  linesSent++;
  await new Promise((r) => setTimeout(r, 50));
}
// Time for dropped segments to show: the test compares what the sink received with what was sent.
await new Promise((r) => setTimeout(r, 500));
sock.end();
await new Promise((r) => setTimeout(r, 100));
dp.close();
console.log(JSON.stringify({ seeded, seedMs, destroyed, linesSent, error: error ?? null }));
