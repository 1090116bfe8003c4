// A config change writes only what it changes: with the mode kept, the agent leaves the flow
// table alone (no walk of every flow, agent/apply.ts); a mode change, and the first apply of a
// restarted agent, bring every plaintext flow's verdict to the mode in force.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { addrToBytes, decode, encode } from '../../agent/codec.js';
import { decodeFlowKey, FLOW_MAPS, type FlowMap, flowMapKey } from '../../agent/flow-maps.js';
import { Defines, SslwallClass, type SslwallFlow, SslwallVerdict } from '../../agent/generated/shared.js';
import { pinLayout } from '../../agent/paths.js';
import { type MapHandle, native } from '../../native/index.js';
import { type AgentEnv, AgentProc, agentEnv, type LogLine, sslwall, writeConfig } from '../../tools/lab/agent-proc.js';
import { createTestbed, type Testbed } from '../../tools/lab/netns.js';

/** Plaintext flows put in each flow map: FLOWS IPv4 ones (sslwall_flows4) and FLOWS IPv6 ones (sslwall_flows). */
const FLOWS = 3;

function withFlows<T>(bpffs: string, name: FlowMap, fn: (map: MapHandle) => T): T {
  const map = native().getPinned(pinLayout(bpffs).map(name), 'map');
  try {
    return fn(map);
  } finally {
    map.close();
  }
}

/** Synthetic plaintext flows (no socket behind them) to port 9, with the given verdict, over IPv4 and IPv6. */
function putFlows(tb: Testbed, bpffs: string, verdict: number): void {
  for (const family of ['ipv4', 'ipv6'] as const) {
    const lo = addrToBytes(tb.client[family]).bytes;
    const hi = addrToBytes(tb.server[family]).bytes;
    for (let i = 0; i < FLOWS; i++) {
      const { map, key } = flowMapKey({
        addr_lo: lo,
        addr_hi: hi,
        port_lo: 30_000 + i,
        port_hi: 9,
        family: family === 'ipv4' ? Defines.SSLWALL_FAMILY_IPV4 : Defines.SSLWALL_FAMILY_IPV6,
        pad: Buffer.alloc(3),
      });
      withFlows(bpffs, map, (m) =>
        native().mapUpdate(
          m,
          key,
          encode<SslwallFlow>('sslwall_flow', { first_seen_ns: 1n, cls: SslwallClass.SSLWALL_CLASS_PLAINTEXT, verdict, client_is_lo: 1 }),
        ),
      );
    }
  }
}

/** The verdicts of the flows to port 9, IPv4 then IPv6. */
function verdicts(bpffs: string): number[] {
  return FLOW_MAPS.flatMap((name) =>
    withFlows(bpffs, name, (map) =>
      native()
        .mapDump(map)
        .filter(([k]) => decodeFlowKey(k).port_hi === 9)
        .map(([, v]) => decode<SslwallFlow>('sslwall_flow', v).verdict),
    ),
  );
}

describe('config changes and the flow table', () => {
  let tb: Testbed;
  let env: AgentEnv;
  let agent: AgentProc | undefined;

  before(async () => {
    tb = await createTestbed('apply');
    env = await agentEnv(tb, 'client', await tb.mountCgroup2());
    writeConfig(env, { mode: 'passive' });
  });

  after(async () => {
    await agent?.stop();
    if (env) await sslwall(env, ['uninstall', '--bpffs', env.bpffs]);
    await tb?.destroy();
  });

  async function change(doc: unknown, what: string): Promise<LogLine> {
    const a = agent!;
    const applied = () => a.lines().filter((l) => l.event === 'config_applied');
    const n = applied().length;
    writeConfig(env, doc);
    await a.waitFor(() => applied().length > n, 5000, `config_applied (${what})`);
    return applied().at(-1)!;
  }

  test('the flows are walked only when the mode changes, and on the first apply after a start', async () => {
    agent = await AgentProc.start(env);
    putFlows(tb, env.bpffs, SslwallVerdict.SSLWALL_VERDICT_REPORTED);

    const kept = await change({ mode: 'passive', bypass: { ports: [2222], cidrs: ['192.0.2.0/24'] } }, 'passive, other ports');
    assert.equal(kept.verdicts_changed, 0);
    assert.equal((kept.steps as Record<string, number>).verdicts_ms, undefined, `no walk of the flows with the mode kept: ${JSON.stringify(kept.steps)}`);

    const active = await change({ mode: 'active' }, 'active');
    assert.ok((active.steps as Record<string, number>).verdicts_ms !== undefined, `the mode change walks the flows: ${JSON.stringify(active.steps)}`);
    assert.equal(active.verdicts_changed, 2 * FLOWS);
    assert.deepEqual(verdicts(env.bpffs), Array(2 * FLOWS).fill(SslwallVerdict.SSLWALL_VERDICT_BLOCKED));

    // An agent that stopped between its flip and its walk leaves verdicts of the old mode: the
    // next agent's first apply, same mode as the kernel's, still reconciles them.
    await agent.stop();
    agent = undefined;
    putFlows(tb, env.bpffs, SslwallVerdict.SSLWALL_VERDICT_REPORTED);
    writeConfig(env, { mode: 'active' });
    agent = await AgentProc.start(env);
    const start = agent.lines().find((l) => l.event === 'config_applied')!;
    assert.equal(start.previous_mode, 'active', 'the pinned config was active already');
    assert.equal(start.verdicts_changed, 2 * FLOWS, `the first apply reconciled the stale verdicts: ${JSON.stringify(start)}`);
    assert.deepEqual(verdicts(env.bpffs), Array(2 * FLOWS).fill(SslwallVerdict.SSLWALL_VERDICT_BLOCKED));
  });
});
