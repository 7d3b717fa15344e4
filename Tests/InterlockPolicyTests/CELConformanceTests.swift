import Foundation
import InterlockPolicy
import Testing

@Suite struct CELConformanceTests {
    /// The in-scope pass rate this engine has reached; the suite fails if a change lowers it.
    static let recordedPassRate = 1265.0 / 1285.0

    @Test func officialConformanceCases() throws {
        let results = try CELConformance.runAll()
        var passed = 0
        var total = 0
        var report = ["CEL conformance (tests/conformance/cel-spec, google/cel-spec 508bd98):"]
        for result in results {
            let rate = result.total == 0 ? 1 : Double(result.passed) / Double(result.total)
            if let reason = CELConformance.outOfScope[result.file] {
                report.append("  \(result.file): \(result.passed)/\(result.total) (out of scope: \(reason))")
                continue
            }
            passed += result.passed
            total += result.total
            report.append("  \(result.file): \(result.passed)/\(result.total) = \(String(format: "%.1f", rate * 100))%")
            for failure in result.failures.prefix(ProcessInfo.processInfo.environment["CEL_CONFORMANCE_VERBOSE"] != nil ? 1000 : 0) {
                report.append("      FAIL \(failure)")
            }
        }
        let rate = Double(passed) / Double(max(total, 1))
        report.append("  in scope: \(passed)/\(total) = \(String(format: "%.2f", rate * 100))%")
        print(report.joined(separator: "\n"))
        #expect(rate >= Self.recordedPassRate, "the in-scope pass rate fell below the recorded \(Self.recordedPassRate)")
        #expect(rate >= 0.95, "CEL conformance target: at least 95% of the in-scope cases")
    }
}
