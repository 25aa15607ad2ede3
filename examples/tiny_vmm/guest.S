/* tiny_vmm's guest: 32-bit protected mode without paging (the VMM sets flat segments through
 * KVM_SET_SREGS, so there is no GDT or page table to build), one vCPU, no interrupts.
 *
 * Registers across the main loop:
 *   %ebx  block number            %edi  the block's buffer (guest physical address)
 *   %esi  string / request pointer %ebp  the avail index after our last post
 *
 * What it does is described in guest_abi.h: read block, transform, write block, print, for
 * TVM_NUM_BLOCKS blocks, then print and halt. */
#include "guest_abi.h"

        .code32
        .text
        .globl _start
_start:
        mov     $TVM_STACK_TOP, %esp
        mov     $msg_start, %esi
        call    puts
        xor     %ebx, %ebx
next_block:
        cmp     $TVM_NUM_BLOCKS, %ebx
        jae     all_done
        /* Even blocks go below the hole, odd blocks above it. */
        mov     %ebx, %edi
        shl     $TVM_BLOCK_SHIFT, %edi
        test    $1, %ebx
        jnz     1f
        add     $TVM_LOW_BUFFERS, %edi
        jmp     2f
1:      add     $TVM_HIGH_BUFFERS, %edi
2:      mov     $TVM_OP_READ, %eax
        call    submit
        test    %eax, %eax
        jnz     io_failed
        /* Swap the case of the block, a word at a time. */
        mov     %edi, %esi
        mov     $(TVM_BLOCK_SIZE / 4), %ecx
3:      xorl    $TVM_XOR_KEY, (%esi)
        add     $4, %esi
        loop    3b
        mov     $TVM_OP_WRITE, %eax
        call    submit
        test    %eax, %eax
        jnz     io_failed
        mov     %ebx, %eax
        add     $'0', %eax
        movb    %al, msg_block_digit
        mov     $msg_block, %esi
        call    puts
        inc     %ebx
        jmp     next_block
all_done:
        mov     $msg_done, %esi
        call    puts
halt:   hlt
        jmp     halt
io_failed:
        mov     $msg_failed, %esi
        call    puts
        jmp     halt

/* Posts request (op %eax, block %ebx, buffer %edi), rings the doorbell, waits until the
 * device has used it and returns its status in %eax. Keeps every other register. */
submit:
        push    %ecx
        push    %edx
        push    %esi
        movzwl  TVM_AVAIL_IDX, %ebp
        mov     %ebp, %ecx
        and     $(TVM_RING_SIZE - 1), %ecx
        mov     %ecx, %esi
        shl     $5, %esi                        /* TVM_REQ_SIZE == 32 */
        add     $TVM_REQ_TABLE, %esi
        mov     %eax, TVM_REQ_OP(%esi)
        movl    $TVM_BLOCK_SIZE, TVM_REQ_LEN(%esi)
        mov     %ebx, %eax
        shl     $TVM_BLOCK_SHIFT, %eax
        mov     %eax, TVM_REQ_OFFSET(%esi)
        movl    $0, TVM_REQ_OFFSET+4(%esi)
        mov     %edi, TVM_REQ_ADDR(%esi)
        movl    $0, TVM_REQ_ADDR+4(%esi)
        movl    $TVM_STATUS_PENDING, TVM_REQ_STATUS(%esi)
        mov     %cx, TVM_AVAIL_RING(,%ecx,2)
        inc     %ebp
        mov     %bp, TVM_AVAIL_IDX
        mov     $TVM_PORT_DOORBELL, %dx
        outb    %al, %dx
1:      cmpw    %bp, TVM_USED_IDX
        jne     1b
        mov     TVM_REQ_STATUS(%esi), %eax
        pop     %esi
        pop     %edx
        pop     %ecx
        ret

/* Writes the NUL-terminated string at %esi to the console. Keeps %eax and %edx. */
puts:
        push    %eax
        push    %edx
        mov     $TVM_PORT_CONSOLE, %dx
1:      lodsb
        test    %al, %al
        jz      2f
        outb    %al, %dx
        jmp     1b
2:      pop     %edx
        pop     %eax
        ret

        .data
msg_start:      .asciz "guest: swapping the case of 8 blocks\n"
msg_block:      .ascii "guest: block "
msg_block_digit:.asciz "0 done\n"
msg_done:       .asciz "guest: all blocks done\n"
msg_failed:     .asciz "guest: I/O error\n"
