import { Module } from '@nestjs/common';
import { RateLimitModule } from '../rate-limit/rate-limit.module';
import { AdminTokenGuard } from './admin-token.guard';
import { NodesController } from './nodes.controller';
import { NodesService } from './nodes.service';

/** The admin API (`X-Admin-Token`): E2B's node routes over the host monitor's fleet, and join tokens for new hosts. */
@Module({
  // Bad admin tokens count against the per-address budget of unauthenticated requests.
  imports: [RateLimitModule],
  controllers: [NodesController],
  providers: [NodesService, AdminTokenGuard],
})
export class AdminModule {}
