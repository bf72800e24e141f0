/* One entry stub per vector: save registers, call interrupt_dispatch(vector), return.
 * (Exceptions with an error code are not expected by these guests.)
 *
 * The return avoids IRET: KVM's instruction emulator, which runs all guest code on hosts
 * without VMX/SVM (see shared/HOST.md), implements IRET in real mode only. Within one
 * privilege level IRET is "pop EIP, pop CS, pop EFLAGS", so the frame is rearranged to
 * [EFLAGS, EIP] and left with POPF; RET. */
    .text
    .altmacro
    .macro stub vector
stub_\vector:
    pusha
    push $\vector
    call interrupt_dispatch
    add $4, %esp
    popa
    jmp interrupt_return
    .endm

/* Stack on entry: EIP, CS, EFLAGS. */
interrupt_return:
    push %eax
    mov 4(%esp), %eax        /* EIP */
    xchg %eax, 12(%esp)      /* EFLAGS out, EIP in its place */
    mov %eax, 8(%esp)        /* EFLAGS over CS */
    pop %eax
    add $4, %esp             /* now: EFLAGS, EIP */
    popf
    ret

    .set vector, 0
    .rept 256
    stub %vector
    .set vector, vector + 1
    .endr

    .macro stub_address vector
    .long stub_\vector
    .endm

    .section .rodata
    .globl interrupt_stubs
    .align 4
interrupt_stubs:
    .set vector, 0
    .rept 256
    stub_address %vector
    .set vector, vector + 1
    .endr

    .section .note.GNU-stack, "", @progbits
