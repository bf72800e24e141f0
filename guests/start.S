/* Multiboot entry shared by every test guest: set a stack, call guest_main(magic, info),
 * then report its return value through isa-debug-exit (port 0xf4). */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003 /* page-align modules, memory information */

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    cli
    mov $stack_top, %esp
    push %ebx
    push %eax
    call guest_main
    outb %al, $0xf4
halt:
    cli
    hlt
    jmp halt

    .bss
    .align 16
    .space 8192
stack_top:

    .section .note.GNU-stack, "", @progbits
