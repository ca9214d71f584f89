import CMPI
import CnnCore

/// The MPI library this program was built against, for diagnostics.
///
/// Both calls are among the few MPI allows before MPI_Init, so these work
/// without initialising MPI (and without a launcher).
public enum MPILibrary {
    /// The implementation's own description (MPI_Get_library_version), e.g.
    /// "Open MPI v4.1.4, ..." or "MPICH Version: 4.0.2 ...", with line breaks
    /// and runs of spaces collapsed to one line.
    public static func libraryVersion() -> String {
        var text = [CChar](repeating: 0, count: Int(cnn_mpi_max_library_version_string()) + 1)
        var length: Int32 = 0
        guard MPI_Get_library_version(&text, &length) == cnn_mpi_success() else { return "unknown" }
        let raw = String(cString: text)
        return raw.split(whereSeparator: { $0 == "\n" || $0 == "\t" || $0 == " " }).joined(separator: " ")
    }

    /// The version of the MPI standard the library implements (MPI_Get_version), e.g. (3, 1).
    public static func standardVersion() -> (major: Int, minor: Int) {
        var major: Int32 = 0, minor: Int32 = 0
        guard MPI_Get_version(&major, &minor) == cnn_mpi_success() else { return (0, 0) }
        return (Int(major), Int(minor))
    }

    /// Which implementation the build selected: "MPICH" when built with
    /// CNN_DIST_MPI=mpich (compile condition CNN_MPICH), else "Open MPI".
    public static var buildSelection: String {
        #if CNN_MPICH
        return "MPICH"
        #else
        return "Open MPI"
        #endif
    }
}
