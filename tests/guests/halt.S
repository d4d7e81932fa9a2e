/* Halts with interrupts off: nothing can wake it, and on some hosts KVM_RUN never returns.
 * Only husk-vmm's watchdog ends this VM. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    mov dx, 0x3f8
    mov al, 'H'
    out dx, al
    mov al, '\n'
    out dx, al
    cli
1:  hlt
    jmp 1b
