import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';

const nodeBuiltins = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];

export default tseslint.config(
  { ignores: ['node_modules/**', 'dist/**', '.lab/**', 'bin/**', 'eslint.config.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'before', 'after'] }] },
      ],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-require-imports': 'off',
    },
  },
  {
    // Workflow code is replayed deterministically inside a sandbox: no I/O, no vendor SDKs.
    files: ['src/workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins.map((name) => ({ name, message: 'Workflows must not import Node built-ins; do I/O in activities.' })),
          patterns: [
            { group: ['@azure/*', 'soap', 'azurite'], message: 'Vendor SDKs belong in activities.' },
            { group: ['@temporalio/activity', '@temporalio/client', '@temporalio/worker'], message: 'Workflows may only use @temporalio/workflow and @temporalio/common.' },
            { group: ['../activities/*', '../vsphere/*', '../vsphere', '../azure/*', '../repository', '../repository/*', '../guest/*', '../lab/*', '../transport/*'], message: 'Import activity types with `import type` only.', allowTypeImports: true },
          ],
        },
      ],
    },
  },
);
