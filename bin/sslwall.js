#!/usr/bin/env node
// Thin launcher: the command is compiled from tools/cli/ into dist/ by tools/setup (npm run build).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../dist/tools/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  process.stderr.write(`sslwall: ${main} is missing; run tools/setup (or npm run build) first\n`);
  process.exit(2);
}
await import(main);
