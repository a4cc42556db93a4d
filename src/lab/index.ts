export * from './lab';
import './inventory';
import './azure';
