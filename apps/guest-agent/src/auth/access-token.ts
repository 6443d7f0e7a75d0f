// envd's token primitives live in the contracts so the edge proxies check exactly what the guest agent checks.
export { ACCESS_TOKEN_HEADER, fileSignature, rejectSignature, rejectSignedFilesUrl, tokensEqual } from '@kiln/contracts/envd-auth';
export type { FileOperation, SignatureCheck } from '@kiln/contracts/envd-auth';
