import { IsOptional, IsString } from 'class-validator';
import { KilnError } from '../errors/kiln-error';
import { forbiddenKeyPath, validatePayload } from './validate-payload';

class NamedBody {
  @IsString()
  name!: string;

  @IsOptional() @IsString({ each: true })
  tags?: string[];
}

describe('validatePayload', () => {
  it('accepts a valid body (the control)', () => {
    expect(validatePayload(NamedBody, JSON.parse('{"name":"app","tags":["v1"]}'))).toMatchObject({ name: 'app', tags: ['v1'] });
  });

  it('refuses prototype keys at any depth as invalid input, never a server fault', () => {
    for (const body of ['{"__proto__":{"x":1},"name":"a"}', '{"name":"a","tags":{"constructor":{"prototype":1}}}', '{"name":"a","x":[{"__proto__":null}]}']) {
      const attempt = () => validatePayload(NamedBody, JSON.parse(body));
      expect(attempt).toThrow(KilnError);
      expect(attempt).toThrow(/not accepted/);
    }
  });

  it('names the path of the first prototype key', () => {
    expect(forbiddenKeyPath(JSON.parse('{"a":{"b":[1,{"constructor":2}]}}'))).toBe('a.b[1].constructor');
    expect(forbiddenKeyPath({ a: { b: [1, 2] } })).toBeUndefined();
  });
});
