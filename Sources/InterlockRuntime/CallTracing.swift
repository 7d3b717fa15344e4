import Instrumentation
import Tracing

/// The spans of governed calls (model and tool calls alike).
///
/// Without a tracer (OpenTelemetry off, the default) every call shares one no-op span and no
/// trace context is injected: finding the tracer, building the span's name and injecting an
/// empty context cost about 2 µs of every call for nothing. The executable installs the
/// tracer before it builds the gateways, so whether one is installed is read once.
struct CallTracing: Sendable {
    let enabled: Bool

    init() {
        enabled = !(InstrumentationSystem.tracer is NoOpTracer)
    }

    func startSpan(_ name: @autoclosure () -> String) -> any Span {
        enabled ? Tracing.startSpan(name(), ofKind: .client) : Self.untraced
    }

    /// The trace headers an upstream gets: `span`'s context, else what the agent sent.
    func traceHeaders(_ span: any Span, traceParent: String?, traceState: String?) -> [(String, String)] {
        var headers: [(String, String)] = []
        appendTraceHeaders(span, traceParent: traceParent, traceState: traceState, to: &headers)
        return headers
    }

    /// Appends `traceparent` and `tracestate`: the running span's when tracing is on, else the
    /// agent's own, passed through.
    func appendTraceHeaders(_ span: any Span, traceParent: String?, traceState: String?, to headers: inout [(String, String)]) {
        var carrier: [String: String] = [:]
        if enabled { InstrumentationSystem.instrument.inject(span.context, into: &carrier, using: DictionaryInjector()) }
        if let value = carrier["traceparent"] ?? traceParent { headers.append(("traceparent", value)) }
        if let value = carrier["tracestate"] ?? traceState { headers.append(("tracestate", value)) }
    }

    private static let untraced: any Span = NoOpTracer.NoOpSpan(context: .topLevel)
}

/// Carries trace context into a string dictionary, then into upstream headers.
struct DictionaryInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}
