/* Takes the virtio-blk completion interrupt the way a kernel would: masks the 8259s,
 * routes IOAPIC pin 5 (the first virtio-mmio GSI) to vector 0x30 on APIC 0, enables the
 * LAPIC, loads an IDT (every other vector resets with "UNEXPECTED"), then submits one read
 * of sector 0 and waits with interrupts on. The device's worker writes the irqfd, KVM
 * raises GSI 5 → IOAPIC → LAPIC → vector 0x30, and the handler counts it and sends EOI.
 * Prints "IRQ=<count> USED=<used idx> ISR=<InterruptStatus>" or "NOIRQ …" when the wait
 * (bounded) ends without one. */
    .intel_syntax noprefix
    .text
    .globl _start
    .code64
_start:
    lea rsp, [rip + stack_top]
    call map_gap
    mov r13d, 0xd0000000

    mov al, 0xff                       /* mask both 8259s */
    out 0x21, al
    out 0xa1, al

    lea rdi, [rip + idt]               /* 256 gates → unexpected */
    lea rsi, [rip + unexpected]
    xor ecx, ecx
1:  call set_gate
    inc ecx
    cmp ecx, 256
    jne 1b
    lea rsi, [rip + irq_handler]
    mov ecx, 0x30
    call set_gate
    lea rax, [rip + idt]
    mov qword ptr [rip + idtr + 2], rax
    lidt [rip + idtr]

    mov eax, 0xfee00000                /* LAPIC */
    mov dword ptr [rax + 0x80], 0      /* TPR: accept everything */
    mov dword ptr [rax + 0xf0], 0x1ff  /* SVR: enable, spurious vector 0xff */
    mov eax, 0xfec00000                /* IOAPIC: redirection entry of pin 5 */
    mov dword ptr [rax], 0x10 + 2 * 5 + 1
    mov dword ptr [rax + 0x10], 0      /* destination APIC id 0 */
    mov dword ptr [rax], 0x10 + 2 * 5
    mov dword ptr [rax + 0x10], 0x30   /* fixed, physical, edge, high, unmasked */

    call blk_init
    lea rdi, [rip + vq_desc]
    lea rax, [rip + hdr_in]
    mov ecx, 16
    mov edx, 1
    mov r8d, 1
    call set_desc
    lea rax, [rip + buf_in]
    mov ecx, 512
    mov edx, 3
    mov r8d, 2
    call set_desc
    lea rax, [rip + st_in]
    mov ecx, 1
    mov edx, 2
    xor r8d, r8d
    call set_desc
    lea rsi, [rip + vq_avail]
    mov word ptr [rsi + 4], 0
    mov word ptr [rsi + 2], 1
    sti
    mov dword ptr [r13 + 0x050], 0     /* QueueNotify → ioeventfd */
    mov ecx, 0x400000                  /* bounded wait for the handler */
2:  cmp dword ptr [rip + irq_count], 0
    jne 3f
    pause
    dec ecx
    jnz 2b
    cli
    lea rbx, [rip + s_noirq]
    call puts
    jmp report
3:  cli
    lea rbx, [rip + s_irq]
    mov eax, dword ptr [rip + irq_count]
    call putreg
report:
    lea rbx, [rip + s_used]
    lea rsi, [rip + vq_used]
    movzx eax, word ptr [rsi + 2]
    call putreg
    lea rbx, [rip + s_isr]
    mov eax, dword ptr [r13 + 0x060]
    call putreg
    lea rbx, [rip + s_done]
    call puts
    jmp reset

fail:
    lea rbx, [rip + s_fail]
    call puts
    jmp reset

/* set_gate: 64-bit interrupt gate ecx → handler rsi in the IDT at rdi; clobbers rax, rdx. */
set_gate:
    mov rdx, rcx
    shl rdx, 4
    add rdx, rdi
    mov rax, rsi
    mov word ptr [rdx], ax
    mov ax, cs
    mov word ptr [rdx + 2], ax
    mov word ptr [rdx + 4], 0x8e00     /* present, DPL 0, interrupt gate */
    mov rax, rsi
    shr rax, 16
    mov word ptr [rdx + 6], ax
    shr rax, 16
    mov dword ptr [rdx + 8], eax
    mov dword ptr [rdx + 12], 0
    ret

irq_handler:
    push rax
    inc dword ptr [rip + irq_count]
    mov eax, dword ptr [r13 + 0x060]   /* ack the device's interrupt status */
    mov dword ptr [r13 + 0x064], eax
    mov eax, 0xfee000b0                /* LAPIC EOI */
    mov dword ptr [rax], 0
    pop rax
    iretq

unexpected:
    lea rbx, [rip + s_unexpected]
    call puts
    jmp reset

#include "common.inc"
#include "virtio.inc"
#include "virtio_queue.inc"

s_irq:        .asciz "\nIRQ"
s_noirq:      .asciz "\nNOIRQ"
s_used:       .asciz "USED"
s_isr:        .asciz "ISR"
s_done:       .asciz "\nDONE\n"
s_fail:       .asciz "\nFAIL\n"
s_unexpected: .asciz "\nUNEXPECTED\n"
    .balign 4
irq_count: .long 0
    .balign 16
idtr:      .word 256 * 16 - 1
           .quad 0
hdr_in:    .long 0, 0
           .quad 0
st_in:     .byte 0xff
    .balign 16
    .space 512
stack_top:
    .balign 4096
gap_pd:    .space 4096
idt:       .space 256 * 16
buf_in:    .space 512
