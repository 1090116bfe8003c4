// The agents of a tier as the engine knows them (GET /api/tiers/:tier/agents, `sslwall agents`):
// each health report with when the engine last heard from it and whether it is behind the
// tier's head — the answer to "which agents run which version, and which refused a document".
import type { AgentsBody, AgentViewBody } from '../schemas/api.js';
import type { Health } from '../schemas/tier.js';
import type { HealthCache } from './health-cache.js';

export interface AgentsFilter {
  errors: boolean;
  behind: boolean;
}

export function agentView(cache: HealthCache, h: Health, headVersion: number | null): AgentViewBody {
  const seen = cache.seenAt.get(`${h.tier}/${h.hostId}`);
  return {
    ...h,
    lastSeen: new Date(seen ?? Date.parse(h.updatedAt)).toISOString(),
    behind: headVersion !== null && (h.configVersion ?? -1) < headVersion,
  };
}

/** The tier's agents, sorted by host id, those with errors or behind first when asked for only them. */
export function tierAgents(cache: HealthCache, tier: string, headVersion: number | null, filter: AgentsFilter): AgentsBody {
  const all = cache.tier(tier);
  const agents = all
    .map((h) => agentView(cache, h, headVersion))
    .filter((a) => (!filter.errors || a.lastError !== null) && (!filter.behind || a.behind))
    // Code-point order: host ids are ASCII, and localeCompare costs ~100 ms over 10,000 agents.
    .sort((a, b) => (a.hostId < b.hostId ? -1 : a.hostId > b.hostId ? 1 : 0));
  return { tier, headVersion, total: all.length, agents };
}
