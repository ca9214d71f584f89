import CMPI
import CnnCore

/// The MPI library this program was built against, for diagnostics.
///
/// Both calls are among the few MPI allows before MPI_Init, so these work
/// without initialising MPI (and without a launcher).
public enum MPILibrary {
    /// The implementation's own description (MPI_Get_library_version) on one
    /// line, e.g. "Open MPI v4.1.4, package: Debian OpenMPI, ..." or
    /// "MPICH Version: 4.0.2; MPICH Release date: ...; MPICH Device: ch4:ucx".
    /// Lines from the first one about how the library was configured and
    /// compiled (MPICH lists its configure line and compilers) are left out
    /// unless `full`.
    public static func libraryVersion(full: Bool = false) -> String {
        var text = [CChar](repeating: 0, count: Int(cnn_mpi_max_library_version_string()) + 1)
        var length: Int32 = 0
        guard MPI_Get_library_version(&text, &length) == cnn_mpi_success() else { return "unknown" }
        var lines: [String] = []
        for line in String(cString: text).split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).joined(separator: " ")
            if !full && words.lowercased().contains("configure") { break }
            if !words.isEmpty { lines.append(words) }
        }
        return lines.isEmpty ? "unknown" : lines.joined(separator: "; ")
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
