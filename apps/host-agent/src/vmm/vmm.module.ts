import { Module } from '@nestjs/common';
import { TemplateModule } from '../template/template.module';
import { AccelerationProbe } from './acceleration-probe';
import { QemuMicrovmDriver } from './qemu-microvm.driver';
import { VmmConfig } from './vmm.config';
import { VMM_DRIVER } from './vmm-driver';

/**
 * The host's VMM: the driver behind VMM_DRIVER (QEMU microvm today) and the acceleration
 * probe. Configured from the environment (KILN_DATA_DIR, KILN_VMM_ACCEL, KILN_QEMU_BINARY,
 * KILN_VMM_TCG_TB_MIB, KILN_VMM_PROBE_TIMEOUT_MS).
 */
@Module({
  imports: [TemplateModule.register()],
  providers: [
    { provide: VmmConfig, useFactory: () => VmmConfig.fromEnv() },
    AccelerationProbe,
    QemuMicrovmDriver,
    { provide: VMM_DRIVER, useExisting: QemuMicrovmDriver },
  ],
  exports: [VMM_DRIVER, AccelerationProbe, VmmConfig],
})
export class VmmModule {}
