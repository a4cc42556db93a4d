// Configuration: the schema (types), parsing and validation of a config file, env overrides, loading.
export * from './schema';
export { assertProfileTransport, insecureWarnings, parseConfig } from './parse';
export { applyEnvOverrides, applyLabEnvOverrides } from './env';
export { configFilePath, labConfigPath, labStateDir, loadAppConfig, loadConfigFile, resolvePassword } from './load';
