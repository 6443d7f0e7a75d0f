import { Injectable } from '@nestjs/common';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { TemplateAuthoringRepository, TemplateRepository, decodeKeysetCursor, encodeKeysetCursor } from '@kiln/db';
import { TEMPLATE_BUILDS_MAX_LIMIT } from './template-request.dto';
import { TemplateAliasBody, TemplateBody, TemplateWithBuildsBody, toTemplateBody, toTemplateWithBuildsBody } from './template-responses';

/** Templates a team may use: its own and the platform's public ones. */
@Injectable()
export class TemplatesService {
  constructor(
    private readonly templates: TemplateRepository,
    private readonly authoring: TemplateAuthoringRepository,
  ) {}

  async list(teamId: string): Promise<TemplateBody[]> {
    return (await this.templates.listVisible(teamId)).map(toTemplateBody);
  }

  /**
   * E2B's `GET /templates/{templateID}`: the template with a page of its builds, newest first. An alias works too.
   * Another team's private template is not found (404), never forbidden (E2B: 403): existence is not leaked.
   */
  async getWithBuilds(
    teamId: string,
    ref: string,
    page: { limit?: number; nextToken?: string },
  ): Promise<{ template: TemplateWithBuildsBody; nextToken?: string }> {
    const cursor = page.nextToken !== undefined ? decodeKeysetCursor(page.nextToken) : undefined;
    if (page.nextToken !== undefined && (!cursor || cursor.order !== 'desc')) throw KilnError.invalid('nextToken: not a token this API issued');
    const template = await this.templates.findVisible(ref, teamId);
    if (!template) throw KilnError.notFound(`template ${ref}`);
    const limit = page.limit ?? TEMPLATE_BUILDS_MAX_LIMIT;
    const builds = await this.templates.buildsPage(template.id, { limit: limit + 1, after: cursor ? { createdAt: cursor.at, id: cursor.id } : undefined });
    const shown = builds.slice(0, limit);
    const last = shown[shown.length - 1];
    return {
      template: toTemplateWithBuildsBody(template, shown),
      nextToken: builds.length > limit ? encodeKeysetCursor(last.createdAt, last.id, 'desc') : undefined,
    };
  }

  /**
   * E2B's alias check, which the SDK's `Template.exists` reads: 404 when no template has the name, 403 when another
   * team's does (the name is taken: names are global), the template otherwise. Unlike the other routes this tells a
   * team that a name exists elsewhere, as E2B does; it reveals nothing else about it.
   */
  async byAlias(teamId: string, alias: string): Promise<TemplateAliasBody> {
    const holder = await this.authoring.aliasHolder(alias);
    if (!holder) throw KilnError.notFound(`template alias ${alias}`);
    if (!holder.public && holder.teamId !== teamId) throw new KilnError(ErrorCode.PermissionDenied, `template alias ${alias} belongs to another team`);
    return { templateID: holder.templateId, public: holder.public };
  }
}
