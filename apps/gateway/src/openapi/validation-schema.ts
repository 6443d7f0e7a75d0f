import { ApiProperty } from '@nestjs/swagger';
import type { ApiPropertyOptions } from '@nestjs/swagger';
import { getMetadataStorage } from 'class-validator';

type Schema = Record<string, unknown>;

/** How each class-validator rule shows up in an OpenAPI property schema. */
function applyRule(schema: Schema, rule: { name?: string; constraints?: unknown[] }): void {
  const [first] = rule.constraints ?? [];
  switch (rule.name) {
    case 'isString':
      schema.type = 'string';
      break;
    case 'isInt':
      schema.type = 'integer';
      break;
    case 'isBoolean':
      schema.type = 'boolean';
      break;
    case 'min':
      schema.minimum = first;
      break;
    case 'max':
      schema.maximum = first;
      break;
    case 'minLength':
      schema.minLength = first;
      break;
    case 'maxLength':
      schema.maxLength = first;
      break;
    case 'matches':
      // OpenAPI patterns carry no flags: a case-insensitive rule is described instead of stated too strictly.
      if (first instanceof RegExp) {
        if (first.flags.includes('i')) schema.description = `matches ${first.source} (case-insensitive)`;
        else schema.pattern = first.source;
      }
      break;
    case 'isIn':
      schema.type = 'string';
      schema.enum = first;
      break;
    case 'isUuid':
      schema.type = 'string';
      schema.format = 'uuid';
      break;
    case 'isStringRecord':
      schema.type = 'object';
      schema.additionalProperties = { type: 'string' };
      break;
  }
}

/**
 * Documents a contracts DTO from its class-validator rules, so the OpenAPI
 * document describes exactly what the gateway validates (the DTOs live in
 * @kiln/contracts and carry no Swagger decorators of their own).
 */
export function documentFromValidation(dto: new (...args: never[]) => object): void {
  const rules = getMetadataStorage().getTargetValidationMetadatas(dto, '', true, false);
  const byProperty = new Map<string, typeof rules>();
  for (const rule of rules) byProperty.set(rule.propertyName, [...(byProperty.get(rule.propertyName) ?? []), rule]);
  for (const [property, propertyRules] of byProperty) {
    const schema: Schema = {};
    let optional = false;
    for (const rule of propertyRules) {
      if (rule.type === 'conditionalValidation') optional = true;
      else applyRule(schema, rule);
    }
    const each = propertyRules.some((r) => r.each);
    const options = { ...(each ? { type: 'array', items: { ...schema } } : schema), required: !optional } as ApiPropertyOptions;
    ApiProperty(options)(dto.prototype, property);
  }
}
