export { linkOrCopy, sha256File, syncFileData } from './file-integrity';
