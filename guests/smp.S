/* Application processor start-up. The BSP copies [ap_trampoline_start, ap_trampoline_end)
 * to 0x8000 and sends INIT-SIPI-SIPI with vector 0x08; each AP starts there in real
 * mode (CS = 0x0800, IP = 0), switches to flat 32-bit protected mode, takes a stack of
 * its own and calls ap_main(). */
#define TRAMPOLINE 0x8000
#define AP_STACK_SIZE 4096
#define MAX_APS 16

    .text
    .code16
    .globl ap_trampoline_start, ap_trampoline_end
ap_trampoline_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl ap_gdt_pointer - ap_trampoline_start
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_entry32
    .align 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
ap_gdt_pointer:
    .word 3 * 8 - 1
    .long ap_gdt - ap_trampoline_start + TRAMPOLINE
ap_trampoline_end:

    .code32
ap_entry32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, ap_next_stack
    cmp $MAX_APS, %eax
    jae ap_park
    inc %eax
    imul $AP_STACK_SIZE, %eax
    lea ap_stacks(%eax), %esp
    call ap_main
ap_park:
    cli
    hlt
    jmp ap_park

    .data
    .align 4
ap_next_stack:
    .long 0
    .bss
    .align 16
ap_stacks:
    .space AP_STACK_SIZE * (MAX_APS + 1)

    .section .note.GNU-stack, "", @progbits
