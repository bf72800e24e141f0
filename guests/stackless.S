/* A Multiboot kernel that calls a function before it sets up a stack of its own, as
 * some kernels that run under qemu-system-x86_64 -kernel do: it relies on the loader
 * entering with ESP in usable memory. It writes "stack ok" to COM1 from the called
 * function, then exits through isa-debug-exit with 0x42 (status 0x85). */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    cli
    call say_ok             /* pushes the return address on the loader's stack */
    mov $0x42, %al
    outb %al, $0xf4
1:  hlt
    jmp 1b

say_ok:
    push %esi               /* and more: the stack must hold what is pushed */
    mov $message, %esi
2:  lodsb
    test %al, %al
    jz 3f
    mov $0x3f8, %dx
    outb %al, %dx
    jmp 2b
3:  pop %esi
    ret

    .section .rodata
message:
    .asciz "stack ok\n"

    .section .note.GNU-stack, "", @progbits
