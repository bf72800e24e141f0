/* Guest "pcitest": hushvm's PCI bus and virtio-pci devices, as a driver sees them.
 * Command line: action=all|enum|bar|blk|rng|console|mask|intx (all: each but mask, intx;
 * the virtio parts only for the devices present), requests=N (virtio-rng requests, 16).
 *
 *   enum     walks bus 0 through CF8/CFC and through ECAM and prints each function
 *            ("pci: dev=N vendor=0x.. device=0x.. class=0x.."), then "pci: functions=N
 *            enumerate=ok|mismatch" (both paths, and 8/16/32-bit reads, must agree)
 *   bar      sizes BAR0 of the first virtio function ("pcibar: dev=N bar_size=B"),
 *            moves it to 0xd0000000 ("old=0x.. new=0x.."), and checks that the device
 *            answers at the new address only, and not while decoding is off
 *            ("moved=1 old_answers=0 new_answers=1 off_answers=0")
 *   blk      writes a 512-byte sector, flushes, reads it back and compares
 *   rng      N requests of 16 bytes
 *   console  sends "hello from virtio-pci\n" on the transmit queue
 *   mask     one virtio-rng request with its MSI-X vector masked: no interrupt, the
 *            pending bit set; unmasked: the interrupt, the bit clear ("pcimask: ...")
 *   intx     N virtio-rng requests without MSI-X: one level-triggered INTx interrupt
 *            each through the IOAPIC pin the interrupt line register names, the ISR
 *            reading 1 each time ("pciintx: pin line requests interrupts isr_queue
 *            spurious": interrupts that found the ISR clear, which a level line
 *            resampled late may raise; a driver tolerates them, as Linux does)
 *
 * The virtio parts run with MSI-X: every completion must arrive as exactly one
 * interrupt on its queue's vector, and none on a configuration vector. Result line:
 * "pcitest: blk_ok blk_requests blk_interrupts rng_requests rng_interrupts
 * console_requests console_interrupts config_interrupts msix_vectors" (the fields of the
 * parts that ran). Exit code 0 when all matched, else the first failure's code below. */
#include "irq.h"
#include "lib.h"
#include "pci.h"
#include "virtio_pci.h"

enum {
    FAIL_ENUMERATE = 0x10,
    FAIL_NO_VIRTIO = 0x11,
    FAIL_BAR_SIZE = 0x12,
    FAIL_BAR_MOVE = 0x13,
    FAIL_BAR_OLD_ANSWERS = 0x14,
    FAIL_BAR_DECODE_OFF = 0x15,
    FAIL_INIT = 0x20,         /* + device index */
    FAIL_MSIX = 0x24,         /* + device index */
    FAIL_DATA = 0x28,         /* + device index: wrong data or status */
    FAIL_INTERRUPTS = 0x2c,   /* + device index: a count that does not match */
    FAIL_TIMEOUT = 0x30,      /* an interrupt never came */
    FAIL_CONFIG_VECTOR = 0x31,
    FAIL_MASK = 0x32,         /* a masked vector delivered, or its pending bit was wrong */
    FAIL_INTX = 0x33,         /* INTx: a count or an ISR value that does not match */
};

#define BAR_TARGET 0xd0000000u
#define WATCHDOG_VECTOR 0x30
#define INTX_VECTOR 0x38
#define MSIX_VECTOR_BASE 0x40  /* device k's entry n: 0x40 + 8k + n */
#define DEVICES 3              /* blk, rng, console */

static const uint16_t virtio_ids[DEVICES] = {2, 4, 3};
static const char *const names[DEVICES] = {"blk", "rng", "console"};

static int failure;
static void fail(int code)
{
    if (!failure) failure = code;
}

static void put_hex_digits(uint32_t v, int digits)
{
    put_str("0x");
    for (int shift = 4 * (digits - 1); shift >= 0; shift -= 4) put_char("0123456789abcdef"[(v >> shift) & 0xf]);
}

static void put_kv(const char *key, uint32_t value)
{
    put_char(' ');
    put_str(key);
    put_char('=');
    put_dec(value);
}

/* ---- interrupts ---- */

static volatile uint32_t vector_count[8 * DEVICES];
static volatile int watchdog_fired;

static void msix_interrupt(uint32_t vector)
{
    vector_count[vector - MSIX_VECTOR_BASE]++;
    lapic_eoi();
}

static void watchdog_interrupt(uint32_t vector)
{
    (void)vector;
    watchdog_fired = 1;
    lapic_eoi();
}

/* Waits until `count` reaches `wanted`, with the LAPIC timer (one-shot, `ticks` of
 * KVM's 1 GHz APIC clock / 16) as a watchdog so a lost interrupt fails instead of
 * hanging. Returns 0 on time, -1 when the watchdog fired first. */
static int wait_count_for(volatile uint32_t *count, uint32_t wanted, uint32_t ticks)
{
    if (*count >= wanted) return 0;
    watchdog_fired = 0;
    lapic_write(APIC_LVT_TIMER, WATCHDOG_VECTOR);
    lapic_write(APIC_TIMER_INITIAL, ticks);
    while (*count < wanted && !watchdog_fired) wait_for_interrupt();
    lapic_write(APIC_TIMER_INITIAL, 0);
    return *count >= wanted ? 0 : -1;
}

/* As above with about a second to wait; a timeout is a failure. */
static int wait_count(volatile uint32_t *count, uint32_t wanted)
{
    if (wait_count_for(count, wanted, 62500000) == 0) return 0;
    fail(FAIL_TIMEOUT);
    return -1;
}

/* ---- enumeration ---- */

struct function { uint8_t devfn; uint32_t id, class; };

/* The functions on bus 0 through `mechanism`, checked against narrower reads. */
static int enumerate(int mechanism, struct function *found, int max, int print, int *width_errors)
{
    int n = 0;
    for (int f = pci_next_function(mechanism, -1); f >= 0 && n < max; f = pci_next_function(mechanism, f)) {
        unsigned devfn = (unsigned)f;
        uint32_t id = pci_read_via(mechanism, devfn, PCI_VENDOR, 4);
        uint32_t class = pci_read_via(mechanism, devfn, PCI_REVISION, 4) >> 8;
        *width_errors += pci_read_via(mechanism, devfn, PCI_VENDOR, 2) != (id & 0xffff);
        *width_errors += pci_read_via(mechanism, devfn, PCI_DEVICE, 2) != id >> 16;
        *width_errors += pci_read_via(mechanism, devfn, PCI_REVISION + 3, 1) != class >> 16;
        found[n++] = (struct function){(uint8_t)devfn, id, class};
        if (print) {
            put_str("pci: dev=");
            put_dec(PCI_DEV(devfn));
            put_str(" fn=");
            put_dec(devfn & 7);
            put_str(" vendor=");
            put_hex_digits(id & 0xffff, 4);
            put_str(" device=");
            put_hex_digits(id >> 16, 4);
            put_str(" class=");
            put_hex_digits(class, 6);
            put_char('\n');
        }
    }
    return n;
}

static void action_enum(void)
{
    static struct function by_cf8[32], by_ecam[32];
    int width_errors = 0;
    int n = enumerate(PCI_CF8, by_cf8, 32, 1, &width_errors);
    int m = enumerate(PCI_ECAM, by_ecam, 32, 0, &width_errors);
    int same = n == m && width_errors == 0;
    for (int i = 0; same && i < n; i++)
        same = by_cf8[i].devfn == by_ecam[i].devfn && by_cf8[i].id == by_ecam[i].id &&
               by_cf8[i].class == by_ecam[i].class;
    /* 00:00.0 must be the host bridge (1b36:0008, class 06/00/00). */
    int bridge = n > 0 && by_cf8[0].devfn == 0 && by_cf8[0].id == 0x00081b36 && by_cf8[0].class == 0x060000;
    put_str("pci:");
    put_kv("functions", (uint32_t)n);
    put_kv("ecam_functions", (uint32_t)m);
    put_kv("width_errors", (uint32_t)width_errors);
    put_str(same && bridge ? " enumerate=ok\n" : " enumerate=mismatch\n");
    if (!same || !bridge) fail(FAIL_ENUMERATE);
}

/* ---- BAR sizing and moving ---- */

/* num_queues through the common configuration at `common`. */
static uint16_t num_queues(uint32_t common) { return virtio_pci_read16(common + VPCI_NUM_QUEUES); }

static void action_bar(void)
{
    int devfn = -1;
    for (int f = pci_next_function(pci_mechanism, -1); f >= 0; f = pci_next_function(pci_mechanism, f))
        if ((pci_read((unsigned)f, PCI_VENDOR, 2)) == VIRTIO_PCI_VENDOR) {
            devfn = f;
            break;
        }
    if (devfn < 0) {
        put_str("pcibar: no virtio function\n");
        fail(FAIL_NO_VIRTIO);
        return;
    }
    unsigned d = (unsigned)devfn;
    uint64_t size = pci_bar_size(d, 0);
    uint32_t old = (uint32_t)pci_bar_address(d, 0);
    /* Where the common configuration is inside the BAR, as its capability says. */
    uint32_t common_offset = virtio_pci_cap_address(devfn, 1) - old;
    pci_command_set(d, PCI_COMMAND_MEMORY);
    uint16_t queues = num_queues(old + common_offset);
    pci_command_clear(d, PCI_COMMAND_MEMORY);
    pci_bar_set(d, 0, BAR_TARGET);
    pci_command_set(d, PCI_COMMAND_MEMORY);
    uint32_t now = (uint32_t)pci_bar_address(d, 0);
    int new_answers = now == BAR_TARGET && num_queues(BAR_TARGET + common_offset) == queues;
    int old_answers = num_queues(old + common_offset) == queues;
    pci_command_clear(d, PCI_COMMAND_MEMORY);
    int off_answers = num_queues(BAR_TARGET + common_offset) == queues;
    pci_command_set(d, PCI_COMMAND_MEMORY);
    put_str("pcibar:");
    put_kv("dev", PCI_DEV(d));
    put_kv("bar_size", (uint32_t)size);
    put_str(" old=");
    put_hex(old);
    put_str(" new=");
    put_hex(now);
    put_kv("num_queues", queues);
    put_kv("moved", (uint32_t)(new_answers && !old_answers && !off_answers));
    put_kv("old_answers", (uint32_t)old_answers);
    put_kv("new_answers", (uint32_t)new_answers);
    put_kv("off_answers", (uint32_t)off_answers);
    put_char('\n');
    if (size != 0x8000 || (size >> 32)) fail(FAIL_BAR_SIZE);
    if (!new_answers) fail(FAIL_BAR_MOVE);
    if (old_answers) fail(FAIL_BAR_OLD_ANSWERS);
    if (off_answers) fail(FAIL_BAR_DECODE_OFF);
}

/* ---- virtio devices with MSI-X ---- */

static struct virtio_pci devices[DEVICES];
static struct vq queues[DEVICES] __attribute__((aligned(4096)));
static uint32_t requests_done[DEVICES], msix_vectors, blk_ok;

/* Brings up device k with MSI-X and its queue `queue` on table entry queue + 1. */
static int open_device(int k, int queue, uint32_t features, uint8_t apic_id)
{
    struct virtio_pci *d = &devices[k];
    int status = virtio_pci_open(d, virtio_ids[k], features);
    if (status) {
        put_str("pcitest: ");
        put_str(names[k]);
        put_str(" init failed at step ");
        put_dec((uint32_t)-status);
        put_char('\n');
        fail(FAIL_INIT + k);
        return -1;
    }
    int vectors = virtio_pci_msix(d, (uint8_t)(MSIX_VECTOR_BASE + 8 * k), apic_id);
    int queue_status = vectors >= queue + 2 && vectors <= 8
                           ? virtio_pci_queue(d, &queues[k], queue, (uint16_t)(queue + 1))
                           : -3;
    int start_status = queue_status ? 0 : virtio_pci_start(d);
    if (queue_status || start_status) {
        /* msix_table_entries < 0: no MSI-X; queue -1: no queue of 16, -2: vector
         * refused, -3: table too small or too large for this guest's 8 vectors. */
        put_str("pcitest: ");
        put_str(names[k]);
        put_str(" set-up failed: msix_table_entries=");
        if (vectors < 0) put_char('-');
        put_dec((uint32_t)(vectors < 0 ? -vectors : vectors));
        put_str(" queue=-");
        put_dec((uint32_t)-queue_status);
        put_str(" start=-");
        put_dec((uint32_t)-start_status);
        put_char('\n');
        fail(FAIL_MSIX + k);
        return -1;
    }
    msix_vectors += (uint32_t)vectors;
    return 0;
}

/* One request on device k's queue; waits for its used entry, then for its interrupt. */
static uint32_t request(int k, int queue, const struct vbuf *bufs, int count)
{
    uint32_t len = virtio_request(&queues[k], queue, bufs, count);
    requests_done[k]++;
    wait_count(&vector_count[8 * k + queue + 1], requests_done[k]);
    return len;
}

static struct { uint32_t type, reserved; uint64_t sector; } blk_header;
static volatile uint8_t blk_status;
static uint8_t sector_out[512], sector_in[512];

static int blk_do(uint32_t type, uint64_t sector, void *buffer, uint32_t len, int device_writes)
{
    blk_header.type = type;
    blk_header.sector = sector;
    blk_status = 0xff;
    struct vbuf bufs[3] = {{&blk_header, sizeof blk_header, 0}, {buffer, len, device_writes}, {(void *)&blk_status, 1, 1}};
    if (!len) bufs[1] = bufs[2];
    request(0, 0, bufs, len ? 3 : 2);
    return blk_status;
}

static void action_blk(uint8_t apic_id)
{
    if (open_device(0, 0, 1u << 9 /* VIRTIO_BLK_F_FLUSH */, apic_id)) return;
    uint32_t capacity = virtio_pci_read32(devices[0].device); /* sectors, low word */
    uint64_t sector = capacity > 1 ? 1 : 0;
    for (int i = 0; i < 512; i++) sector_out[i] = (uint8_t)(i * 13 + 5);
    int errors = blk_do(1, sector, sector_out, 512, 0) != 0;
    errors += blk_do(4, 0, 0, 0, 0) != 0;
    errors += blk_do(0, sector, sector_in, 512, 1) != 0;
    for (int i = 0; i < 512; i++) errors += sector_in[i] != sector_out[i];
    put_str("pcitest: blk");
    put_kv("capacity", capacity);
    put_kv("errors", (uint32_t)errors);
    put_char('\n');
    blk_ok = errors == 0;
    if (errors) fail(FAIL_DATA + 0);
}

static void action_rng(uint32_t wanted, uint8_t apic_id)
{
    static uint8_t buffer[16];
    if (open_device(1, 0, 0, apic_id)) return;
    struct vbuf in = {buffer, sizeof buffer, 1};
    uint32_t errors = 0;
    for (uint32_t i = 0; i < wanted; i++) errors += request(1, 0, &in, 1) != sizeof buffer;
    if (errors) fail(FAIL_DATA + 1);
}

/* MSI-X masking (PCI 3.0 6.8.2.9): a completion on a masked vector raises nothing and
 * sets its pending bit; unmasking delivers it and clears the bit. One rng request on
 * device 1, entry 1 masked. */
static void action_mask(uint8_t apic_id)
{
    static uint8_t buffer[4];
    if (open_device(1, 0, 0, apic_id)) return;
    struct virtio_pci *d = &devices[1];
    unsigned devfn = (unsigned)d->devfn;
    uint32_t pba = pci_read(devfn, d->msix_cap + 8, 4);
    uint32_t pba_address = (uint32_t)pci_bar_address(devfn, (int)(pba & 7)) + (pba & ~7u);
    uint32_t control = d->msix_table + 16 * 1 + 12;
    volatile uint32_t *count = &vector_count[8 * 1 + 1];
    *(volatile uint32_t *)control = 1;
    struct vbuf in = {buffer, sizeof buffer, 1};
    virtio_request(&queues[1], 0, &in, 1);
    requests_done[1]++;
    /* About 10 ms for an interrupt that must not come. */
    wait_count_for(count, 1, 625000);
    uint32_t masked_interrupts = *count;
    uint32_t pending = (virtio_pci_read32(pba_address) >> 1) & 1;
    *(volatile uint32_t *)control = 0;
    int delivered = wait_count(count, 1) == 0;
    uint32_t pending_after = (virtio_pci_read32(pba_address) >> 1) & 1;
    put_str("pcimask:");
    put_kv("masked_interrupts", masked_interrupts);
    put_kv("pending", pending);
    put_kv("unmasked_interrupts", *count);
    put_kv("pending_after", pending_after);
    put_char('\n');
    if (masked_interrupts || pending != 1 || !delivered || pending_after != 0) fail(FAIL_MASK);
}

/* INTx (no MSI-X): each completion raises the function's line once; the handler reads
 * the ISR (read-to-clear: bit 0, a used buffer) and EOIs, and hushvm's resample raises
 * the level line again only while the ISR is still set. */
static volatile uint32_t intx_interrupts, intx_isr_queue;
static uint32_t intx_isr;

static void intx_interrupt(uint32_t vector)
{
    (void)vector;
    intx_interrupts++;
    intx_isr_queue += *(volatile uint8_t *)intx_isr & 1;
    lapic_eoi();
}

static void action_intx(uint32_t wanted)
{
    static uint8_t buffer[4];
    struct virtio_pci *d = &devices[1];
    if (virtio_pci_open(d, virtio_ids[1], 0) || virtio_pci_queue(d, &queues[1], 0, VIRTIO_MSI_NO_VECTOR) ||
        virtio_pci_start(d)) {
        fail(FAIL_INIT + 1);
        return;
    }
    uint8_t line = (uint8_t)pci_read((unsigned)d->devfn, 0x3c, 1); /* interrupt line: the GSI */
    uint8_t pin = (uint8_t)pci_read((unsigned)d->devfn, 0x3d, 1);
    intx_isr = d->isr;
    idt_set(INTX_VECTOR, intx_interrupt);
    ioapic_route_level(line, INTX_VECTOR);
    struct vbuf in = {buffer, sizeof buffer, 1};
    for (uint32_t i = 0; i < wanted; i++) {
        virtio_request(&queues[1], 0, &in, 1);
        requests_done[1]++;
        /* Counted through the ISR: an interrupt that finds it clear is spurious. */
        if (wait_count(&intx_isr_queue, i + 1)) break;
    }
    /* A little longer: a late extra (resampled) interrupt would show here. */
    wait_count_for(&intx_interrupts, intx_interrupts + 1, 625000);
    put_str("pciintx:");
    put_kv("pin", pin);
    put_kv("line", line);
    put_kv("requests", requests_done[1]);
    put_kv("interrupts", intx_interrupts);
    put_kv("isr_queue", intx_isr_queue);
    put_kv("spurious", intx_interrupts - intx_isr_queue);
    put_char('\n');
    if (pin != 1 || intx_isr_queue != wanted) fail(FAIL_INTX);
}

static void action_console(uint8_t apic_id)
{
    static const char line[] = "hello from virtio-pci\n";
    if (open_device(2, 1, 0, apic_id)) return; /* queue 1: port 0's transmitq */
    struct vbuf out = {(void *)line, sizeof line - 1, 0};
    request(2, 1, &out, 1);
}

/* Checks device k's counts: one interrupt per request on the queue's vector, none on
 * its configuration vector; prints them. */
static void report_device(int k, int queue, uint32_t *config_interrupts)
{
    uint32_t interrupts = vector_count[8 * k + queue + 1];
    *config_interrupts += vector_count[8 * k];
    put_char(' ');
    put_str(names[k]);
    put_str("_requests=");
    put_dec(requests_done[k]);
    put_char(' ');
    put_str(names[k]);
    put_str("_interrupts=");
    put_dec(interrupts);
    if (interrupts != requests_done[k]) fail(FAIL_INTERRUPTS + k);
}

int guest_main(uint32_t magic, const struct mb_info *mbi)
{
    if (magic != MB_BOOT_MAGIC) return 3;
    const char *action = cmdline_value(mbi, "action");
    int all = !action || value_is(action, "all");
    pic_mask_all();
    idt_init();
    lapic_enable(0);
    lapic_write(APIC_TIMER_DIVIDE, 3); /* divide by 16 */
    idt_set(WATCHDOG_VECTOR, watchdog_interrupt);
    for (int v = 0; v < 8 * DEVICES; v++) idt_set((uint8_t)(MSIX_VECTOR_BASE + v), msix_interrupt);
    uint8_t apic_id = (uint8_t)(lapic_read(APIC_ID) >> 24);

    if (all || value_is(action, "enum")) action_enum();
    if (all || value_is(action, "bar")) action_bar();
    /* With action=all, a virtio part runs only if its device is there. */
    int present[DEVICES];
    for (int k = 0; k < DEVICES; k++)
        present[k] = pci_find(VIRTIO_PCI_VENDOR, (uint16_t)VIRTIO_PCI_DEVICE(virtio_ids[k])) >= 0;
    int run[DEVICES];
    for (int k = 0; k < DEVICES; k++) run[k] = all ? present[k] : value_is(action, names[k]);
    if (run[0]) action_blk(apic_id);
    if (run[1]) action_rng(cmdline_u32(mbi, "requests", 16), apic_id);
    if (run[2]) action_console(apic_id);
    /* Not part of all: it uses the rng device's queue on its own. */
    if (value_is(action, "mask")) {
        action_mask(apic_id);
        run[1] = 1;
    }
    if (value_is(action, "intx")) action_intx(cmdline_u32(mbi, "requests", 16));

    if (run[0] || run[1] || run[2]) {
        uint32_t config_interrupts = 0;
        put_str("pcitest:");
        if (run[0]) put_kv("blk_ok", blk_ok);
        if (run[0]) report_device(0, 0, &config_interrupts);
        if (run[1]) report_device(1, 0, &config_interrupts);
        if (run[2]) report_device(2, 1, &config_interrupts);
        put_kv("config_interrupts", config_interrupts);
        put_kv("msix_vectors", msix_vectors);
        put_char('\n');
        if (config_interrupts) fail(FAIL_CONFIG_VECTOR);
    }
    put_str("pcitest: exit=");
    put_dec((uint32_t)failure);
    put_char('\n');
    return failure;
}
