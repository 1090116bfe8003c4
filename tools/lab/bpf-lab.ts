// SETUP for classifier tests: the classifier object loaded into the kernel (maps private to this
// process, nothing pinned or attached), a config written through the agent's own apply code,
// and helpers to run packets through BPF_PROG_TEST_RUN and read what the filter decided.

import { applyConfig, type MapHandles, type SelfProtection } from '../../agent/apply.js';
import { closeMaps, sharedMaps } from '../../agent/datapath.js';
import { type FlowRecord, readCounters, readFlowMap, readFlows } from '../../agent/flows.js';
import { bpfObjects } from '../../agent/paths.js';
import { type BpfObject, native, type ProgHandle } from '../../native/index.js';
import { ConfigSchema } from '../../schemas/config.js';
import type { Endpoint } from './packets.js';

export const PASS = -1;
export const DROP = 2;

export class Lab {
  readonly obj: BpfObject;
  readonly maps: MapHandles;
  readonly egressProg: ProgHandle;
  readonly ingressProg: ProgHandle;

  constructor() {
    this.obj = native().openObject(bpfObjects.classifier);
    this.obj.load();
    this.maps = sharedMaps(this.obj);
    this.egressProg = this.obj.prog('sslwall_classify_egress');
    this.ingressProg = this.obj.prog('sslwall_classify_ingress');
  }

  /** The config last written by configure(), for withConfig() to put back. */
  private inForce: { doc: unknown; self: SelfProtection | null } | null = null;

  /** self: the agent's own process and listening ports, as the agent passes them (agent/self.ts). */
  configure(doc: unknown, self: SelfProtection | null = null): void {
    applyConfig(this.maps, ConfigSchema.parse(doc), null, self);
    this.inForce = { doc, self };
  }

  /** Run fn with doc in force, then put back the config that was in force before, whatever fn does. */
  withConfig<T>(doc: unknown, fn: () => T, self: SelfProtection | null = null): T {
    const before = this.inForce;
    this.configure(doc, self);
    try {
      return fn();
    } finally {
      if (before) this.configure(before.doc, before.self);
    }
  }

  /** A packet leaving this host; returns the tc verdict (-1 pass, 2 drop). */
  egress(pkt: Buffer): number {
    return native().testRun(this.egressProg, pkt, 1).retval | 0;
  }

  ingress(pkt: Buffer): number {
    return native().testRun(this.ingressProg, pkt, 1).retval | 0;
  }

  /**
   * Established flows and inbound handshakes (half_open): without sockets behind the test
   * packets, no kernel establishes anything, so an inbound flow stays half-open here.
   */
  flows(): Array<FlowRecord & { halfOpen?: true }> {
    return [...readFlows(this.maps), ...this.halfOpen()];
  }

  halfOpen(): Array<FlowRecord & { halfOpen: true }> {
    return readFlowMap(this.maps.sslwall_half_open).map((f) => ({ ...f, halfOpen: true as const }));
  }

  flow(client: Endpoint, server: Endpoint): (FlowRecord & { halfOpen?: true }) | undefined {
    return this.flows().find((f) => f.saddr === client.addr && f.sport === client.port && f.daddr === server.addr && f.dport === server.port);
  }

  counters() {
    return readCounters(this.maps.sslwall_counters);
  }

  close(): void {
    closeMaps(this.maps);
    this.egressProg.close();
    this.ingressProg.close();
    this.obj.close();
  }
}

let nextPort = 20000;
/** A fresh client port per case, so cases never share a flow. */
export function clientPort(): number {
  return nextPort++;
}
