// What the agent has in force, shared by the agent's loop and its config sources (file, etcd).
import type { Config } from '../schemas/config.js';
import type { AppliedMeta } from './state.js';

export const AGENT_VERSION = '0.1.0';

/** What the agent has in force, for health and logs. */
export interface AgentStatus {
  applied: { config: Config; meta: AppliedMeta } | null;
  appliedAt: string | null;
  applyLatencyMs: number | null;
  lastError: { code: string; message: string; revision: number | null; at: string } | null;
}
