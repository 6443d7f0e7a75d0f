import { absent, hostName, INCOMPLETE, type PeekedName } from './peeked-name';

const REQUEST_LINE = /^[A-Z]{3,16} \S+ HTTP\/1\.[01]$/;

/**
 * The name in the Host header of the HTTP/1.x request at the start of `bytes` (the port, if any, dropped).
 * `incomplete` until the header block has ended; `absent` for anything that is not an HTTP/1.x request with exactly
 * one Host header holding a host name (two Host headers could be read differently by the server).
 */
export function readHttpHost(bytes: Buffer): PeekedName {
  const text = bytes.toString('latin1');
  const firstLineEnd = text.indexOf('\n');
  if (firstLineEnd === -1) return /^[A-Z]{0,16}( |$)/.test(text) ? INCOMPLETE : absent('not an HTTP request');
  if (!REQUEST_LINE.test(text.slice(0, firstLineEnd).replace(/\r$/, ''))) return absent('not an HTTP/1.x request line');
  const end = /\r?\n\r?\n/.exec(text);
  if (!end) return INCOMPLETE;
  const lines = text.slice(firstLineEnd + 1, end.index).split(/\r?\n/);
  const hosts = lines.filter((line) => /^host[ \t]*:/i.test(line)).map((line) => line.slice(line.indexOf(':') + 1).trim());
  if (hosts.length !== 1) return absent(hosts.length === 0 ? 'request has no Host header' : 'request has several Host headers');
  const match = /^([^:[\]]+)(?::\d{1,5})?$/.exec(hosts[0]);
  if (!match) return absent('Host header holds no host name');
  return hostName(match[1]);
}
