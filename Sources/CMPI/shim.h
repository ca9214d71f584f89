#ifndef CNN_DIST_CMPI_SHIM_H
#define CNN_DIST_CMPI_SHIM_H
#include <mpi.h>

// Standard MPI-3 only (no OMPI_ or MPICH_ extensions), so the same shim
// builds against Open MPI (Sources/CMPI) and MPICH (Sources/CMPIMPICH).

// Swift cannot import MPI's handle macros (they are casts of addresses of
// library globals in OpenMPI, integers in MPICH): wrap each in a function.
static inline MPI_Comm cnn_mpi_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype cnn_mpi_float(void) { return MPI_FLOAT; }
static inline MPI_Datatype cnn_mpi_double(void) { return MPI_DOUBLE; }
static inline MPI_Datatype cnn_mpi_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype cnn_mpi_int64(void) { return MPI_INT64_T; }
static inline MPI_Op cnn_mpi_sum(void) { return MPI_SUM; }
static inline MPI_Op cnn_mpi_max(void) { return MPI_MAX; }
static inline MPI_Op cnn_mpi_min(void) { return MPI_MIN; }
static inline void *cnn_mpi_in_place(void) { return MPI_IN_PLACE; }
static inline MPI_Request cnn_mpi_request_null(void) { return MPI_REQUEST_NULL; }
static inline MPI_Status *cnn_mpi_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Errhandler cnn_mpi_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline int cnn_mpi_success(void) { return MPI_SUCCESS; }
static inline int cnn_mpi_max_error_string(void) { return MPI_MAX_ERROR_STRING; }
static inline int cnn_mpi_max_processor_name(void) { return MPI_MAX_PROCESSOR_NAME; }
static inline int cnn_mpi_max_library_version_string(void) { return MPI_MAX_LIBRARY_VERSION_STRING; }
static inline int cnn_mpi_thread_funneled(void) { return MPI_THREAD_FUNNELED; }
static inline int cnn_mpi_thread_serialized(void) { return MPI_THREAD_SERIALIZED; }
static inline int cnn_mpi_thread_multiple(void) { return MPI_THREAD_MULTIPLE; }
// Added for deadlines and the collective-schedule check (MPICommunicator).
static inline MPI_Status *cnn_mpi_statuses_ignore(void) { return MPI_STATUSES_IGNORE; }
static inline MPI_Comm cnn_mpi_comm_null(void) { return MPI_COMM_NULL; }
static inline MPI_Datatype cnn_mpi_char(void) { return MPI_CHAR; }
#endif
