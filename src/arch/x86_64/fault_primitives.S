// guestmem: fault-tolerant copy and fill for x86-64 (Linux, System V ABI).
//
// Every instruction here that touches caller memory may fault: SIGSEGV for an unmapped or
// protected page, SIGBUS for a page past the end of a truncated file. Each such instruction
// has a label and a recovery label, recorded as a pair in the fault table (section
// guestmem_extable) by the `may_fault` macro. The one fixup function (fault_handler.cpp)
// looks the faulting RIP up in the table, moves RIP to the recovery label and puts the fault's
// details in r10 and r11. The fast path therefore costs nothing: no system call, no setjmp,
// no registration. The single loads, stores and compare-exchanges are not here: they are
// inline assembly (include/guestmem/detail/fault_x86_64.hpp) with entries in the same table.
//
// Both routines return the number of bytes NOT done (0 when everything was done). A fault in
// an instruction that moves more than one byte recovers into a byte-at-a-time loop that
// restarts at the first byte not known to be done, so the final fault, and the count, are
// exact to the byte. The byte loop never stops early without a fault: a page that became
// accessible again since the first fault is simply copied.
//
// Registers
//   reg  | copy                      | fill
//   rdi  | in: dst; advanced by rep  | in: dst; advanced by rep
//   rsi  | in: src; advanced by rep  | in: byte value (sil)
//   rdx  | in: len                   | in: len
//   rcx  | in: fault*; rep counter   | in: fault*; rep counter
//   rax  | scratch; out: left        | byte pattern; out: left
//   r8   | fault* (kept)             | fault* (kept)
//   r9   | restart offset: every byte before it is done
//   r10  | at a recovery label: the faulting address (si_addr), written by the fixup function
//   r11  | at a recovery label: the signal number (SIGSEGV or SIGBUS), written by the fixup function
//   ymm0-3, xmm0-1 | copy data (vzeroupper before every return that follows AVX use)
// No routine keeps anything live in r10 or r11 across a faulting instruction, and none
// touches the stack, so a recovered fault leaves nothing to unwind.
//
// The fault record (`fault*`, guestmem::detail::RawFault) is written only after a fault:
//   [fault + 0]  u64  faulting address
//   [fault + 8]  i32  signal number

        .intel_syntax noprefix

// Copies at least this long use `rep movsb` (ERMS/FSRM); shorter ones above 31 bytes use
// 128-byte AVX2 blocks when the CPU has AVX2 (rep movsb starts up slowly below a few KiB).
        .set COPY_REP_MIN, 32768

// Records that the instruction at label \at may fault and resumes at label \to if it does:
// an entry of two offsets, each from its own address (guestmem::detail::FaultTableEntry). The
// flags are those of the inline entries (detail/fault_x86_64.hpp): allocated, and linked to
// the code's section so that a linker that collects unused sections keeps the two together.
        .macro may_fault at:req, to:req
        .pushsection guestmem_extable, "ao", @progbits, \at
        .balign 4
        .long   \at - .
        .long   \to - .
        .popsection
        .endm

// Stores the fault's details (r10, r11) into the fault record at \record.
        .macro record_fault record:req
        mov     qword ptr [\record], r10
        mov     dword ptr [\record + 8], r11d
        .endm

        .bss
        .globl  guestmem_fault_copy_avx2
        .hidden guestmem_fault_copy_avx2
// Nonzero when copies may use AVX2; set once by install_fault_handler() before any copy.
guestmem_fault_copy_avx2:
        .byte   0

        .section .text.guestmem_fault, "ax", @progbits

// size_t guestmem_fault_copy(void* dst, const void* src, size_t len, RawFault* fault)
// Copies len bytes forward. A copy of 1, 2, 4 or 8 bytes is one load and one store.
        .balign 16
        .globl  guestmem_fault_copy
        .type   guestmem_fault_copy, @function
guestmem_fault_copy:
        .cfi_startproc
        mov     r8, rcx
        xor     r9d, r9d
        cmp     rdx, 16
        jb      .Lcopy_small
        cmp     rdx, 32
        jb      .Lcopy_16_31
        cmp     rdx, COPY_REP_MIN
        jae     .Lcopy_rep
        test    byte ptr [rip + guestmem_fault_copy_avx2], 1
        jz      .Lcopy_rep

        // 32 <= len < COPY_REP_MIN with AVX2: 128-byte blocks, then 32-byte ones, then the
        // last 32 bytes (overlapping bytes already done).
        cmp     rdx, 128
        jb      .Lcopy_avx_32s
        lea     rax, [rdx - 128]
.Lcopy_avx_128:
.Lca_l0: vmovdqu ymm0, ymmword ptr [rsi + r9]
        may_fault .Lca_l0, .Lcopy_avx_fault
.Lca_l1: vmovdqu ymm1, ymmword ptr [rsi + r9 + 32]
        may_fault .Lca_l1, .Lcopy_avx_fault
.Lca_l2: vmovdqu ymm2, ymmword ptr [rsi + r9 + 64]
        may_fault .Lca_l2, .Lcopy_avx_fault
.Lca_l3: vmovdqu ymm3, ymmword ptr [rsi + r9 + 96]
        may_fault .Lca_l3, .Lcopy_avx_fault
.Lca_s0: vmovdqu ymmword ptr [rdi + r9], ymm0
        may_fault .Lca_s0, .Lcopy_avx_fault
.Lca_s1: vmovdqu ymmword ptr [rdi + r9 + 32], ymm1
        may_fault .Lca_s1, .Lcopy_avx_fault
.Lca_s2: vmovdqu ymmword ptr [rdi + r9 + 64], ymm2
        may_fault .Lca_s2, .Lcopy_avx_fault
.Lca_s3: vmovdqu ymmword ptr [rdi + r9 + 96], ymm3
        may_fault .Lca_s3, .Lcopy_avx_fault
        add     r9, 128
        cmp     r9, rax
        jbe     .Lcopy_avx_128
.Lcopy_avx_32s:
        lea     rax, [rdx - 32]
        cmp     r9, rax
        ja      .Lcopy_avx_last
.Lcopy_avx_32:
.Lca_l4: vmovdqu ymm0, ymmword ptr [rsi + r9]
        may_fault .Lca_l4, .Lcopy_avx_fault
.Lca_s4: vmovdqu ymmword ptr [rdi + r9], ymm0
        may_fault .Lca_s4, .Lcopy_avx_fault
        add     r9, 32
        cmp     r9, rax
        jbe     .Lcopy_avx_32
.Lcopy_avx_last:
        cmp     r9, rdx
        je      .Lcopy_avx_done
        mov     r9, rax
.Lca_l5: vmovdqu ymm0, ymmword ptr [rsi + r9]
        may_fault .Lca_l5, .Lcopy_avx_fault
.Lca_s5: vmovdqu ymmword ptr [rdi + r9], ymm0
        may_fault .Lca_s5, .Lcopy_avx_fault
.Lcopy_avx_done:
        vzeroupper
        xor     eax, eax
        ret
.Lcopy_avx_fault:
        vzeroupper
        jmp     .Lcopy_bytes

        // len >= COPY_REP_MIN, or 32 <= len without AVX2.
.Lcopy_rep:
        mov     rcx, rdx
.Lcr_m:  rep movsb
        may_fault .Lcr_m, .Lcopy_rep_fault
        xor     eax, eax
        ret
.Lcopy_rep_fault:
        // rep movsb stops at a restartable point: rcx bytes are left, and rdi and rsi have
        // advanced by the bytes done. Go back to the bases and retry byte by byte from there.
        mov     r9, rdx
        sub     r9, rcx
        sub     rdi, r9
        sub     rsi, r9
        jmp     .Lcopy_bytes

        // 16 <= len < 32: two 16-byte halves that may overlap; both loads come first.
.Lcopy_16_31:
.Lc16_l0: movdqu xmm0, xmmword ptr [rsi]
        may_fault .Lc16_l0, .Lcopy_bytes
.Lc16_l1: movdqu xmm1, xmmword ptr [rsi + rdx - 16]
        may_fault .Lc16_l1, .Lcopy_bytes
.Lc16_s0: movdqu xmmword ptr [rdi], xmm0
        may_fault .Lc16_s0, .Lcopy_bytes
.Lc16_s1: movdqu xmmword ptr [rdi + rdx - 16], xmm1
        may_fault .Lc16_s1, .Lcopy_bytes
        xor     eax, eax
        ret

        // len < 16. Exactly 1, 2, 4 and 8 bytes are single accesses (the tearing rule of
        // docs/DESIGN.md); other lengths use two accesses that may overlap.
.Lcopy_small:
        cmp     edx, 8
        je      .Lcopy_8
        ja      .Lcopy_9_15
        cmp     edx, 4
        je      .Lcopy_4
        ja      .Lcopy_5_7
        cmp     edx, 2
        je      .Lcopy_2
        ja      .Lcopy_3
        test    edx, edx
        jz      .Lcopy_none
.Lc1_l: movzx   eax, byte ptr [rsi]
        may_fault .Lc1_l, .Lcopy_bytes
.Lc1_s: mov     byte ptr [rdi], al
        may_fault .Lc1_s, .Lcopy_bytes
.Lcopy_none:
        xor     eax, eax
        ret
.Lcopy_2:
.Lc2_l: movzx   eax, word ptr [rsi]
        may_fault .Lc2_l, .Lcopy_bytes
.Lc2_s: mov     word ptr [rdi], ax
        may_fault .Lc2_s, .Lcopy_bytes
        xor     eax, eax
        ret
.Lcopy_3:
.Lc3_l0: movzx  eax, word ptr [rsi]
        may_fault .Lc3_l0, .Lcopy_bytes
.Lc3_l1: movzx  ecx, byte ptr [rsi + 2]
        may_fault .Lc3_l1, .Lcopy_bytes
.Lc3_s0: mov    word ptr [rdi], ax
        may_fault .Lc3_s0, .Lcopy_bytes
.Lc3_s1: mov    byte ptr [rdi + 2], cl
        may_fault .Lc3_s1, .Lcopy_bytes
        xor     eax, eax
        ret
.Lcopy_4:
.Lc4_l: mov     eax, dword ptr [rsi]
        may_fault .Lc4_l, .Lcopy_bytes
.Lc4_s: mov     dword ptr [rdi], eax
        may_fault .Lc4_s, .Lcopy_bytes
        xor     eax, eax
        ret
.Lcopy_5_7:
.Lc5_l0: mov    eax, dword ptr [rsi]
        may_fault .Lc5_l0, .Lcopy_bytes
.Lc5_l1: mov    ecx, dword ptr [rsi + rdx - 4]
        may_fault .Lc5_l1, .Lcopy_bytes
.Lc5_s0: mov    dword ptr [rdi], eax
        may_fault .Lc5_s0, .Lcopy_bytes
.Lc5_s1: mov    dword ptr [rdi + rdx - 4], ecx
        may_fault .Lc5_s1, .Lcopy_bytes
        xor     eax, eax
        ret
.Lcopy_8:
.Lc8_l: mov     rax, qword ptr [rsi]
        may_fault .Lc8_l, .Lcopy_bytes
.Lc8_s: mov     qword ptr [rdi], rax
        may_fault .Lc8_s, .Lcopy_bytes
        xor     eax, eax
        ret
.Lcopy_9_15:
.Lc9_l0: mov    rax, qword ptr [rsi]
        may_fault .Lc9_l0, .Lcopy_bytes
.Lc9_l1: mov    rcx, qword ptr [rsi + rdx - 8]
        may_fault .Lc9_l1, .Lcopy_bytes
.Lc9_s0: mov    qword ptr [rdi], rax
        may_fault .Lc9_s0, .Lcopy_bytes
.Lc9_s1: mov    qword ptr [rdi + rdx - 8], rcx
        may_fault .Lc9_s1, .Lcopy_bytes
        xor     eax, eax
        ret

        // The recovery loop: bytes [r9, len) one at a time. Its own fault is exact.
.Lcopy_bytes:
        cmp     r9, rdx
        jae     .Lcopy_none
.Lcb_l: movzx   eax, byte ptr [rsi + r9]
        may_fault .Lcb_l, .Lcopy_byte_fault
.Lcb_s: mov     byte ptr [rdi + r9], al
        may_fault .Lcb_s, .Lcopy_byte_fault
        inc     r9
        jmp     .Lcopy_bytes
.Lcopy_byte_fault:
        record_fault r8
        mov     rax, rdx
        sub     rax, r9
        ret
        .cfi_endproc
        .size   guestmem_fault_copy, . - guestmem_fault_copy

// size_t guestmem_fault_fill(void* dst, int byte, size_t len, RawFault* fault)
// Sets len bytes to `byte`. A fill of 1, 2, 4 or 8 bytes is one store.
        .balign 16
        .globl  guestmem_fault_fill
        .type   guestmem_fault_fill, @function
guestmem_fault_fill:
        .cfi_startproc
        mov     r8, rcx
        xor     r9d, r9d
        movzx   eax, sil
        cmp     rdx, 8
        je      .Lfill_8
        cmp     rdx, 4
        je      .Lfill_4
        cmp     rdx, 2
        je      .Lfill_2
        cmp     rdx, 1
        je      .Lfill_1
        mov     rcx, rdx
.Lfr_s: rep stosb
        may_fault .Lfr_s, .Lfill_rep_fault
        xor     eax, eax
        ret
.Lfill_rep_fault:
        // As in copy: rcx bytes are left and rdi has advanced by the bytes done.
        mov     r9, rdx
        sub     r9, rcx
        sub     rdi, r9
        jmp     .Lfill_bytes
.Lfill_8:
        movabs  rcx, 0x0101010101010101
        imul    rax, rcx
.Lf8_s: mov     qword ptr [rdi], rax
        may_fault .Lf8_s, .Lfill_bytes
        xor     eax, eax
        ret
.Lfill_4:
        imul    eax, eax, 0x01010101
.Lf4_s: mov     dword ptr [rdi], eax
        may_fault .Lf4_s, .Lfill_bytes
        xor     eax, eax
        ret
.Lfill_2:
        imul    eax, eax, 0x0101
.Lf2_s: mov     word ptr [rdi], ax
        may_fault .Lf2_s, .Lfill_bytes
        xor     eax, eax
        ret
.Lfill_1:
.Lf1_s: mov     byte ptr [rdi], al
        may_fault .Lf1_s, .Lfill_bytes
        xor     eax, eax
        ret

        // The recovery loop; al still holds the byte (the multiplications keep the low byte).
.Lfill_bytes:
        cmp     r9, rdx
        jae     .Lfill_done
.Lfb_s: mov     byte ptr [rdi + r9], al
        may_fault .Lfb_s, .Lfill_byte_fault
        inc     r9
        jmp     .Lfill_bytes
.Lfill_done:
        xor     eax, eax
        ret
.Lfill_byte_fault:
        record_fault r8
        mov     rax, rdx
        sub     rax, r9
        ret
        .cfi_endproc
        .size   guestmem_fault_fill, . - guestmem_fault_fill

        .section .note.GNU-stack, "", @progbits
