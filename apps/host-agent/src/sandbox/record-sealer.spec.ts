import { RecordSealer, SealedValueError } from './record-sealer';

describe('RecordSealer', () => {
  const sealer = new RecordSealer('a-host-state-key-of-enough-length');

  it('opens what it sealed, and never writes the plaintext', () => {
    const sealed = sealer.seal('sbx1', 'envd-token-value');
    expect(sealed).not.toContain('envd-token-value');
    expect(sealed).toMatch(/^v1\./);
    expect(sealer.open('sbx1', sealed)).toBe('envd-token-value');
    expect(sealer.seal('sbx1', 'envd-token-value')).not.toBe(sealed); // fresh IV each time
  });

  it('refuses another key, another sandbox id and a tampered value', () => {
    const sealed = sealer.seal('sbx1', 'envd-token-value');
    expect(() => new RecordSealer('another-host-state-key-of-length').open('sbx1', sealed)).toThrow(SealedValueError);
    expect(() => sealer.open('sbx2', sealed)).toThrow(SealedValueError);
    const parts = sealed.split('.');
    parts[2] = Buffer.from('forged-token-val').toString('base64url');
    expect(() => sealer.open('sbx1', parts.join('.'))).toThrow(SealedValueError);
    expect(() => sealer.open('sbx1', 'plain-text')).toThrow(SealedValueError);
  });
});
