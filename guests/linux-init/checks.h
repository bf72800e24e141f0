/* The device checks of the test /init: each prints HUSHVM-CHECK lines (lib.h). */
#ifndef LINUX_INIT_CHECKS_H
#define LINUX_INIT_CHECKS_H
#include "lib.h"

/* virtio-blk disks (blk.c): `hushvm.blk=pci,mmio` names the transports expected, one
 * disk each (default: one disk, either transport). */
void check_blk(void);
/* virtio-rng, virtio-console, ttyS0, online CPUs, virtio-net, vsock (devices.c). */
void check_rng(void);
void check_console(void);
void check_serial(void);
void check_cpus(void);
void check_net(void);
void check_vsock(void);

/* The transport ("pci", "mmio" or the parent's driver name) of the first device bound
 * to virtio driver `driver`, and that device's name (virtioN) in `device`; 0 on
 * success. */
int virtio_transport(const char *driver, char *transport, u64 cap, char *device, u64 dcap);
/* "pci" for virtio-pci, "mmio" for virtio-mmio, else the driver's own name. */
const char *transport_of_driver(const char *driver);
/* Interrupts delivered so far to every /proc/interrupts line that names `device`
 * (virtioN, virtioN-config, virtioN-req.0, ...); in *through_msi, those of its lines
 * that are MSI or MSI-X vectors. */
u64 interrupts_of(const char *device, u64 *through_msi);

#endif
