import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';

const nodeBuiltins = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];

// Production code never imports the embedded lab (src/lab/): any relative path into a folder named `lab`.
const noLab = {
  regex: '^(\\.{1,2}/)+(.*/)?lab(/.*)?$',
  message: 'Production code must not import src/lab/; the CLI reaches the lab through src/cli/lab-door.ts only.',
};

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
    files: ['src/**/*.ts'],
    ignores: [
      'src/lab/**',
      // The one door: the CLI's lab, demo and lab-guest commands load the lab on demand from here.
      'src/cli/lab-door.ts',
    ],
    rules: { 'no-restricted-imports': ['error', { patterns: [noLab] }] },
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
            noLab,
            { group: ['@azure/*', 'soap', 'azurite'], message: 'Vendor SDKs belong in activities.' },
            {
              group: ['@temporalio/activity', '@temporalio/client', '@temporalio/worker'],
              message: 'Workflows may only use @temporalio/workflow and @temporalio/common.',
            },
            {
              group: [
                '../activities/*',
                '../vsphere/*',
                '../vsphere',
                '../azure/*',
                '../repository',
                '../repository/*',
                '../guest/*',
                '../lab/*',
                '../transport/*',
              ],
              message: 'Import activity types with `import type` only.',
              allowTypeImports: true,
            },
          ],
        },
      ],
    },
  },
);
