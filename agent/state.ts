// Last known good config on disk: written atomically (write, fsync, rename) after every apply,
// read at start when the configured source is unusable.
import { mkdirSync, openSync, writeSync, fsyncSync, closeSync, renameSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import { parseConfigText } from './config-file.js';
import type { Config } from '../schemas/config.js';

export function lastGoodPath(stateDir: string): string {
  return path.join(stateDir, 'last-good.json');
}

export function saveLastGood(stateDir: string, config: Config): void {
  mkdirSync(stateDir, { recursive: true });
  const file = lastGoodPath(stateDir);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, JSON.stringify(config, null, 2) + '\n');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  // The rename is durable only once the folder entry is on disk too.
  const dirFd = openSync(stateDir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

export function loadLastGood(stateDir: string): Config | null {
  const file = lastGoodPath(stateDir);
  if (!existsSync(file)) return null;
  return parseConfigText(readFileSync(file, 'utf8'), file);
}
