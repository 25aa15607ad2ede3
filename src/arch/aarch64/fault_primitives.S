// guestmem: fault-tolerant copy and fill for aarch64 (Linux, AAPCS64).
//
// Every instruction here that touches caller memory may fault: SIGSEGV for an unmapped or
// protected page, SIGBUS for a page past the end of a truncated file. Each such instruction
// has a label and a recovery label, recorded as a pair in the fault table (section
// guestmem_extable) by the `may_fault` macro. The one fixup function (src/arch/fault_handler.cpp
// with fault_context.cpp) looks the faulting PC up in the table, moves PC to the recovery label
// and puts the fault's details in x16 and x17. The fast path therefore costs nothing: no system
// call, no setjmp, no registration. The single loads, stores and compare-exchanges are not
// here: they are inline assembly (include/guestmem/detail/fault_aarch64.hpp) with entries in
// the same table.
//
// Both routines return the number of bytes NOT done (0 when everything was done). A fault in
// an instruction that moves more than one byte recovers into a byte-at-a-time loop that
// restarts at the first byte not known to be done, so the final fault, and the count, are
// exact to the byte. The byte loop never stops early without a fault: a page that became
// accessible again since the first fault is simply copied. Within a block every load comes
// before the first store, so no byte past the fault is written by a store that came after
// the fault. (The architecture allows a store that straddles a page boundary and faults on
// one page to have written its bytes on the other: a faulting store that starts on an
// inaccessible page may have written the following accessible bytes it covers, up to 31.)
//
// Registers
//   reg     | copy                          | fill
//   x0      | in: dst; out: bytes left      | in: dst; out: bytes left
//   x1      | in: src                       | in: byte value (w1)
//   x2      | in: len                       | in: len
//   x3      | in: fault* (kept)             | in: fault* (kept)
//   x9      | restart offset: every byte before it is done
//   x10     | src + x9                      | dst + x9
//   x11     | dst + x9                      | the byte, eight times
//   x12     | the loops' bound: the last offset of a full block; data in the 16-31 case
//   x13-x15 | data of small copies          |
//   x16     | at a recovery label: the faulting address (si_addr), written by the fixup function
//   x17     | at a recovery label: the signal number (SIGSEGV or SIGBUS), written by the fixup
//   q0-q3   | data of 16- and 64-byte blocks| q0: the byte, sixteen times
// No routine keeps anything live in x16 or x17 across a faulting instruction, and none
// touches the stack or calls, so a recovered fault leaves nothing to unwind.
//
// The fault record (`fault*`, guestmem::detail::RawFault) is written only after a fault:
//   [fault + 0]  u64  faulting address
//   [fault + 8]  i32  signal number

// Copies at least this long use 64-byte blocks (two pairs of q registers); shorter ones from
// 32 bytes use 16-byte blocks.
        .set COPY_BLOCK, 64

// Records that the instruction at label \at may fault and resumes at label \to if it does:
// an entry of two offsets, each from its own address (guestmem::detail::FaultTableEntry). The
// flags are those of the inline entries (detail/fault_aarch64.hpp): allocated, and linked to
// the code's section so that a linker that collects unused sections keeps the two together.
        .macro may_fault at:req, to:req
        .pushsection guestmem_extable, "ao", %progbits, \at
        .balign 4
        .long   \at - .
        .long   \to - .
        .popsection
        .endm

// Stores the fault's details (x16, x17) into the fault record at \record.
        .macro record_fault record:req
        str     x16, [\record]
        str     w17, [\record, #8]
        .endm

        .section .text.guestmem_fault, "ax", %progbits

// size_t guestmem_fault_copy(void* dst, const void* src, size_t len, RawFault* fault)
// Copies len bytes forward. A copy of 1, 2, 4 or 8 bytes is one load and one store.
        .balign 16
        .globl  guestmem_fault_copy
        .type   guestmem_fault_copy, %function
guestmem_fault_copy:
        .cfi_startproc
        mov     x9, #0
        cmp     x2, #16
        b.lo    .Lcopy_small
        cmp     x2, #32
        b.lo    .Lcopy_16_31

        // len >= 32: 64-byte blocks, then 16-byte ones, then the last 16 bytes (overlapping
        // bytes already done).
        subs    x12, x2, #COPY_BLOCK
        b.lo    .Lcopy_16s
.Lcopy_64:
        add     x10, x1, x9
        add     x11, x0, x9
.Lc64_l0: ldp   q0, q1, [x10]
        may_fault .Lc64_l0, .Lcopy_bytes
.Lc64_l1: ldp   q2, q3, [x10, #32]
        may_fault .Lc64_l1, .Lcopy_bytes
.Lc64_s0: stp   q0, q1, [x11]
        may_fault .Lc64_s0, .Lcopy_bytes
.Lc64_s1: stp   q2, q3, [x11, #32]
        may_fault .Lc64_s1, .Lcopy_bytes
        add     x9, x9, #COPY_BLOCK
        cmp     x9, x12
        b.ls    .Lcopy_64
.Lcopy_16s:
        sub     x12, x2, #16
        cmp     x9, x12
        b.hi    .Lcopy_last_16
.Lcopy_16:
        add     x10, x1, x9
        add     x11, x0, x9
.Lc16b_l: ldr   q0, [x10]
        may_fault .Lc16b_l, .Lcopy_bytes
.Lc16b_s: str   q0, [x11]
        may_fault .Lc16b_s, .Lcopy_bytes
        add     x9, x9, #16
        cmp     x9, x12
        b.ls    .Lcopy_16
.Lcopy_last_16:
        cmp     x9, x2
        b.eq    .Lcopy_none
        mov     x9, x12
        add     x10, x1, x9
        add     x11, x0, x9
.Lcl_l: ldr     q0, [x10]
        may_fault .Lcl_l, .Lcopy_bytes
.Lcl_s: str     q0, [x11]
        may_fault .Lcl_s, .Lcopy_bytes
        mov     x0, #0
        ret

        // 16 <= len < 32: two 16-byte halves that may overlap; both loads come first.
.Lcopy_16_31:
        add     x10, x1, x2
        add     x11, x0, x2
.Lc16_l0: ldp   x12, x13, [x1]
        may_fault .Lc16_l0, .Lcopy_bytes
.Lc16_l1: ldp   x14, x15, [x10, #-16]
        may_fault .Lc16_l1, .Lcopy_bytes
.Lc16_s0: stp   x12, x13, [x0]
        may_fault .Lc16_s0, .Lcopy_bytes
.Lc16_s1: stp   x14, x15, [x11, #-16]
        may_fault .Lc16_s1, .Lcopy_bytes
        mov     x0, #0
        ret

        // len < 16. Exactly 1, 2, 4 and 8 bytes are single accesses (the tearing rule of
        // docs/DESIGN.md); other lengths use two accesses that may overlap.
.Lcopy_small:
        cmp     x2, #8
        b.eq    .Lcopy_8
        b.hi    .Lcopy_9_15
        cmp     x2, #4
        b.eq    .Lcopy_4
        b.hi    .Lcopy_5_7
        cmp     x2, #2
        b.eq    .Lcopy_2
        b.hi    .Lcopy_3
        cbz     x2, .Lcopy_none
.Lc1_l: ldrb    w13, [x1]
        may_fault .Lc1_l, .Lcopy_bytes
.Lc1_s: strb    w13, [x0]
        may_fault .Lc1_s, .Lcopy_bytes
.Lcopy_none:
        mov     x0, #0
        ret
.Lcopy_2:
.Lc2_l: ldrh    w13, [x1]
        may_fault .Lc2_l, .Lcopy_bytes
.Lc2_s: strh    w13, [x0]
        may_fault .Lc2_s, .Lcopy_bytes
        mov     x0, #0
        ret
.Lcopy_3:
.Lc3_l0: ldrh   w13, [x1]
        may_fault .Lc3_l0, .Lcopy_bytes
.Lc3_l1: ldrb   w14, [x1, #2]
        may_fault .Lc3_l1, .Lcopy_bytes
.Lc3_s0: strh   w13, [x0]
        may_fault .Lc3_s0, .Lcopy_bytes
.Lc3_s1: strb   w14, [x0, #2]
        may_fault .Lc3_s1, .Lcopy_bytes
        mov     x0, #0
        ret
.Lcopy_4:
.Lc4_l: ldr     w13, [x1]
        may_fault .Lc4_l, .Lcopy_bytes
.Lc4_s: str     w13, [x0]
        may_fault .Lc4_s, .Lcopy_bytes
        mov     x0, #0
        ret
.Lcopy_5_7:
        add     x10, x1, x2
        add     x11, x0, x2
.Lc5_l0: ldr    w13, [x1]
        may_fault .Lc5_l0, .Lcopy_bytes
.Lc5_l1: ldur   w14, [x10, #-4]
        may_fault .Lc5_l1, .Lcopy_bytes
.Lc5_s0: str    w13, [x0]
        may_fault .Lc5_s0, .Lcopy_bytes
.Lc5_s1: stur   w14, [x11, #-4]
        may_fault .Lc5_s1, .Lcopy_bytes
        mov     x0, #0
        ret
.Lcopy_8:
.Lc8_l: ldr     x13, [x1]
        may_fault .Lc8_l, .Lcopy_bytes
.Lc8_s: str     x13, [x0]
        may_fault .Lc8_s, .Lcopy_bytes
        mov     x0, #0
        ret
.Lcopy_9_15:
        add     x10, x1, x2
        add     x11, x0, x2
.Lc9_l0: ldr    x13, [x1]
        may_fault .Lc9_l0, .Lcopy_bytes
.Lc9_l1: ldur   x14, [x10, #-8]
        may_fault .Lc9_l1, .Lcopy_bytes
.Lc9_s0: str    x13, [x0]
        may_fault .Lc9_s0, .Lcopy_bytes
.Lc9_s1: stur   x14, [x11, #-8]
        may_fault .Lc9_s1, .Lcopy_bytes
        mov     x0, #0
        ret

        // The recovery loop: bytes [x9, len) one at a time. Its own fault is exact.
.Lcopy_bytes:
        cmp     x9, x2
        b.hs    .Lcopy_none
.Lcb_l: ldrb    w13, [x1, x9]
        may_fault .Lcb_l, .Lcopy_byte_fault
.Lcb_s: strb    w13, [x0, x9]
        may_fault .Lcb_s, .Lcopy_byte_fault
        add     x9, x9, #1
        b       .Lcopy_bytes
.Lcopy_byte_fault:
        record_fault x3
        sub     x0, x2, x9
        ret
        .cfi_endproc
        .size   guestmem_fault_copy, . - guestmem_fault_copy

// size_t guestmem_fault_fill(void* dst, int byte, size_t len, RawFault* fault)
// Sets len bytes to `byte`. A fill of 1, 2, 4 or 8 bytes is one store.
        .balign 16
        .globl  guestmem_fault_fill
        .type   guestmem_fault_fill, %function
guestmem_fault_fill:
        .cfi_startproc
        mov     x9, #0
        and     w1, w1, #0xff
        mov     x11, #0x0101010101010101
        mul     x11, x1, x11
        cmp     x2, #8
        b.eq    .Lfill_8
        cmp     x2, #4
        b.eq    .Lfill_4
        cmp     x2, #2
        b.eq    .Lfill_2
        cmp     x2, #1
        b.eq    .Lfill_1
        // Other lengths below 16 have no single-access rule: the byte loop does them.
        cmp     x2, #16
        b.lo    .Lfill_bytes

        // len >= 16: 64-byte blocks, then 16-byte ones, then the last 16 bytes (overlapping).
        dup     v0.16b, w1
        subs    x12, x2, #COPY_BLOCK
        b.lo    .Lfill_16s
.Lfill_64:
        add     x10, x0, x9
.Lf64_s0: stp   q0, q0, [x10]
        may_fault .Lf64_s0, .Lfill_bytes
.Lf64_s1: stp   q0, q0, [x10, #32]
        may_fault .Lf64_s1, .Lfill_bytes
        add     x9, x9, #COPY_BLOCK
        cmp     x9, x12
        b.ls    .Lfill_64
.Lfill_16s:
        sub     x12, x2, #16
        cmp     x9, x12
        b.hi    .Lfill_last_16
.Lfill_16:
        add     x10, x0, x9
.Lf16_s: str    q0, [x10]
        may_fault .Lf16_s, .Lfill_bytes
        add     x9, x9, #16
        cmp     x9, x12
        b.ls    .Lfill_16
.Lfill_last_16:
        cmp     x9, x2
        b.eq    .Lfill_done
        mov     x9, x12
        add     x10, x0, x9
.Lfl_s: str     q0, [x10]
        may_fault .Lfl_s, .Lfill_bytes
        mov     x0, #0
        ret
.Lfill_8:
.Lf8_s: str     x11, [x0]
        may_fault .Lf8_s, .Lfill_bytes
        mov     x0, #0
        ret
.Lfill_4:
.Lf4_s: str     w11, [x0]
        may_fault .Lf4_s, .Lfill_bytes
        mov     x0, #0
        ret
.Lfill_2:
.Lf2_s: strh    w11, [x0]
        may_fault .Lf2_s, .Lfill_bytes
        mov     x0, #0
        ret
.Lfill_1:
.Lf1_s: strb    w11, [x0]
        may_fault .Lf1_s, .Lfill_bytes
        mov     x0, #0
        ret

        // The recovery loop; w1 holds the byte.
.Lfill_bytes:
        cmp     x9, x2
        b.hs    .Lfill_done
.Lfb_s: strb    w1, [x0, x9]
        may_fault .Lfb_s, .Lfill_byte_fault
        add     x9, x9, #1
        b       .Lfill_bytes
.Lfill_done:
        mov     x0, #0
        ret
.Lfill_byte_fault:
        record_fault x3
        sub     x0, x2, x9
        ret
        .cfi_endproc
        .size   guestmem_fault_fill, . - guestmem_fault_fill

        .section .note.GNU-stack, "", %progbits
