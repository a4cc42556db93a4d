export * from './lab';
import './inventory';
