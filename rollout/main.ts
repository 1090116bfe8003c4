// Starting and stopping one engine replica: the etcd client, the Engine, its HTTP API. `sslwall
// engine` runs it until SIGTERM/SIGINT (runEngine); `sslwall up` starts it beside its other
// parts and stops it with them (startEngine).
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { createEtcdClient, type EtcdConnection } from '../schemas/etcd.js';
import { startApi } from './api.js';
import { Engine } from './engine.js';
import { Signer } from './signing.js';

export interface EngineRunOptions {
  etcd: EtcdConnection;
  /** ed25519 private key file (sslwall keygen). */
  signingKey: string;
  id: string;
  /** HOST:PORT of the API, dashboard and /metrics. */
  listen: string;
  prefix?: string;
  leaseTtlS?: number;
}

export interface RunningEngine {
  engine: Engine;
  api: FastifyInstance;
  /** Close the API, resign leadership, close the etcd client. */
  stop(): Promise<void>;
}

export async function startEngine(opts: EngineRunOptions, log: Logger): Promise<RunningEngine> {
  const signer = Signer.fromFile(opts.signingKey);
  const client = createEtcdClient(opts.etcd);
  const engine = new Engine({ client, prefix: opts.prefix ?? '/sslwall/', signer, id: opts.id, log, leaseTtlS: opts.leaseTtlS ?? 5 });
  let api: FastifyInstance;
  try {
    api = await startApi(engine, opts.listen, log);
  } catch (err) {
    client.close();
    throw err;
  }
  engine.start();
  log.info({ event: 'engine_ready', listen: opts.listen, id: opts.id }, `engine listening on http://${opts.listen}`);
  return {
    engine,
    api,
    async stop() {
      log.info({ event: 'engine_stopping' }, 'stopping; resigning leadership');
      await api.close();
      await engine.stop();
      client.close();
    },
  };
}

/** `sslwall engine`: runs until SIGTERM or SIGINT, then stops cleanly (a follower takes over at once). */
export async function runEngine(opts: EngineRunOptions, log: Logger): Promise<void> {
  const running = await startEngine(opts, log);
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', () => resolve());
    process.once('SIGINT', () => resolve());
  });
  await running.stop();
}
