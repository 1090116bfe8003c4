// The architecture's rules, checked by `npm test` (tools/check-deps.mjs) and shown by
// `npm run deps:graph`. docs/architecture.md explains each rule; a rule changes there first.
/** @type {import('dependency-cruiser').IConfiguration} */
module.exports = {
  forbidden: [
    {
      name: 'agent-not-to-rollout',
      comment: 'The agent and the engine meet only in etcd, through schemas/: the agent never imports the engine.',
      severity: 'error',
      from: { path: '^agent/' },
      to: { path: '^rollout/' },
    },
    {
      name: 'rollout-not-to-agent',
      comment: 'The agent and the engine meet only in etcd, through schemas/: the engine never imports the agent.',
      severity: 'error',
      from: { path: '^rollout/' },
      to: { path: '^agent/' },
    },
    {
      name: 'schemas-is-a-leaf',
      comment: 'schemas/ is what both sides stand on: it imports no other part of sslwall.',
      severity: 'error',
      from: { path: '^schemas/' },
      to: { path: '^(agent|rollout|native|tools|test)/' },
    },
    {
      name: 'native-not-to-agent',
      comment: 'The addon is one function per libbpf operation; it knows nothing of the agent (or anything above it).',
      severity: 'error',
      from: { path: '^native/' },
      to: { path: '^(agent|rollout|tools|test)/' },
    },
    {
      name: 'only-tests-import-test',
      comment: 'test/ holds tests only; what tests, benches and sslwall up share lives in tools/lab.',
      severity: 'error',
      from: { pathNot: '^test/' },
      to: { path: '^test/' },
    },
    {
      name: 'parts-not-to-tools',
      comment: 'The command, benches, simulator and lab stand on the parts, never the reverse.',
      severity: 'error',
      from: { path: '^(agent|rollout|schemas|native)/' },
      to: { path: '^tools/' },
    },
    {
      name: 'no-cycles',
      comment: 'A cycle means two modules are one concern or a third is missing.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    {
      name: 'no-unresolvable',
      comment: 'An import that resolves to nothing is a typo or a missing dependency.',
      severity: 'error',
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    reporterOptions: {
      dot: { collapsePattern: '^(node_modules/[^/]+|[^/]+/[^/]+)' },
      archi: { collapsePattern: '^(node_modules/[^/]+|agent|rollout|schemas|native|tools/[^/]+|test/[^/]+)' },
    },
  },
};
