export { sha256File, syncFileData } from './file-integrity';
