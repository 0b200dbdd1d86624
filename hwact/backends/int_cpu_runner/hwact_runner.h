/* hwact static program runner: a whole integer plan as one call (issue 15).

   A static program is a plan compiled for fixed input shapes by hwact/backends/int_cpu_static.py: the
   kernel calls of hwact_int.h in order, plus the data movement the plan's layout steps need (strided
   copies with type conversion, fills, integer sums), every pointer an offset into one of its regions:

     const    bytes of the program's constants blob (weights, biases, tables, folded index tensors)
     work     a slice of one workspace, laid out so that buffers alive at the same time never overlap
     input i / output i   the caller's contiguous arrays
     packed   a weight packed for the ISA in use, made at load (and again after hw_force_isa)

   The program is an int64 array (layout in runner.c); every region, offset, opcode and argument count is
   checked when it is loaded. It is made by hwact for its user's own model: hwact never reads one from a
   folder it is given (bench compiles the checked plan.json instead). */
#ifndef HWACT_RUNNER_H
#define HWACT_RUNNER_H

#include <stdint.h>

typedef struct hw_program hw_program;

/* NULL on a malformed program, with the reason in error (error_len bytes). The constants are copied. */
hw_program *hw_program_new(const int64_t *code, int64_t code_len, const uint8_t *constants, int64_t constants_len,
                           char *error, int64_t error_len);
/* Runs the program: inputs[i] / outputs[i] are the caller's arrays of the sizes the program was made for.
   0 on success; -1 with the reason in error (an embedding id outside its table). */
int hw_program_run(hw_program *program, void **inputs, void **outputs, char *error, int64_t error_len);
/* hw_program_run, adding each run instruction's wall time to nanoseconds[i] (one per run instruction) */
int hw_program_profile(hw_program *program, void **inputs, void **outputs, int64_t *nanoseconds, char *error,
                       int64_t error_len);
int hw_program_opcode(const hw_program *program, int64_t instruction);   /* of run instruction i, -1 past the end */
int64_t hw_program_workspace_bytes(const hw_program *program);
int64_t hw_program_io_count(const hw_program *program, int output);            /* inputs (0) or outputs (1) */
int64_t hw_program_io_bytes(const hw_program *program, int output, int64_t index);   /* -1: no such array */
uint64_t hw_fnv1a(const uint8_t *bytes, int64_t count);                         /* the constants' checksum */
void hw_program_free(hw_program *program);
/* The name of opcode `op` ("hw_linear", "copy", ...), NULL past the last: the Python side checks its table. */
const char *hw_program_op_name(int op);

#endif
