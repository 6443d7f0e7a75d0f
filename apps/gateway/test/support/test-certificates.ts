import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A throwaway CA and a wildcard certificate it signed, as files (what an operator mounts) and as bytes. */
export interface TestCertificates {
  dir: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  ca: Buffer;
  remove(): void;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/**
 * Makes, with the openssl CLI as the dev stack does, a CA and a leaf for `*.{domain}` and `{domain}` (or the
 * `names` given) in a new temp directory. EC P-256 keys: quick to make on a slow machine.
 */
export function makeTestCertificates(domain: string, options: { names?: string[] } = {}): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-tls-test-'));
  const caFile = join(dir, 'ca.pem');
  const caKeyFile = join(dir, 'ca-key.pem');
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', caKeyFile, '-out', caFile, '-days', '30', '-subj', '/CN=Kiln gateway test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const csrFile = join(dir, 'leaf.csr');
  openssl(['req', '-new', ...ec, '-keyout', keyFile, '-out', csrFile, '-subj', `/CN=*.${domain}`]);
  const names = options.names ?? [`*.${domain}`, domain];
  const extFile = join(dir, 'leaf.ext');
  writeFileSync(
    extFile,
    ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth',
      `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`, ''].join('\n'),
  );
  openssl(['x509', '-req', '-in', csrFile, '-CA', caFile, '-CAkey', caKeyFile, '-CAcreateserial', '-days', '30', '-out', certFile, '-extfile', extFile]);
  return { dir, caFile, certFile, keyFile, ca: readFileSync(caFile), remove: () => rmSync(dir, { recursive: true, force: true }) };
}
