export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('bench: not built yet\n');
  return 1;
}
