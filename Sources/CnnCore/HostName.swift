#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// This host's name (gethostname), as reports and file names use it; "?" if it cannot be read.
public func hostNameForReports() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    return gethostname(&buffer, buffer.count - 1) == 0 ? String(cString: buffer) : "?"
}
