import { Injectable } from '@nestjs/common';
import { KilnError } from '@kiln/contracts';
import { TemplateRepository } from '@kiln/db';
import { TemplateAliasBody, TemplateBody, toTemplateBody } from './template-responses';

/** Templates a team may use: its own and the platform's public ones. */
@Injectable()
export class TemplatesService {
  constructor(private readonly templates: TemplateRepository) {}

  async list(teamId: string): Promise<TemplateBody[]> {
    return (await this.templates.listVisible(teamId)).map(toTemplateBody);
  }

  /** Another team's private alias is reported missing (404), never forbidden: existence is not leaked. */
  async byAlias(teamId: string, alias: string): Promise<TemplateAliasBody> {
    const visible = await this.templates.listVisible(teamId);
    const template = visible.find((t) => t.aliases.some((a) => a.alias === alias));
    if (!template) throw KilnError.notFound(`template alias ${alias}`);
    return { templateID: template.id, public: template.public };
  }
}
