// The etcd-less config source: a JSON file, re-read when it changes and on SIGHUP. A bad
// file is refused with an error line and the config in force stays.
import { existsSync, type FSWatcher, readFileSync, watch } from 'node:fs';
import path from 'node:path';
import { type Config, ConfigSchema, describeIssues } from '../schemas/config.js';
import { SslwallError } from '../schemas/errors.js';

export function parseConfigText(text: string, source: string): Config {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${source} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  const parsed = ConfigSchema.safeParse(doc);
  if (!parsed.success) {
    throw new SslwallError('SSLWALL_E_CONFIG_INVALID', `${source} is not a valid sslwall config: ${describeIssues(parsed.error)}`, { cause: parsed.error });
  }
  return parsed.data;
}

export function readConfigFile(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new SslwallError('SSLWALL_E_CONFIG_READ', `cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseConfigText(text, file);
}

/**
 * Calls onChange when the file may have changed. Watches the folder, not the file, so editors
 * that replace the file (write + rename) are seen too; bursts are coalesced.
 */
export function watchConfigFile(file: string, onChange: () => void): FSWatcher {
  const base = path.basename(file);
  let timer: NodeJS.Timeout | undefined;
  // A missing folder (the config source is gone) leaves SIGHUP as the way to reload.
  if (!existsSync(path.dirname(path.resolve(file)))) return { close() {} } as FSWatcher;
  const watcher = watch(path.dirname(path.resolve(file)), (_type, name) => {
    if (name !== null && name !== base) return;
    clearTimeout(timer);
    timer = setTimeout(onChange, 50);
  });
  watcher.unref();
  return watcher;
}
