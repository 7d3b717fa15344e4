import HTTPTypes
import Hummingbird
import InterlockCore
import InterlockRuntime

/// The authenticate stage at the HTTP edge: reads `Authorization: Bearer` or `x-api-key`
/// (what Anthropic clients send) and asks the governor who it is.
struct AgentAuthenticationMiddleware: RouterMiddleware {
    typealias Context = InterlockRequestContext
    let governor: CallGovernor

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let key = Self.apiKey(authorization: request.headers[.authorization], xAPIKey: request.headers[HTTPField.Name("x-api-key")!])
        var caller = try await governor.authenticate(credential: key, requestID: context.requestID, target: request.uri.path)
        caller.run = try RunReference.fromHeaders(
            runID: request.headers[HTTPField.Name("x-interlock-run-id")!], parentRunID: request.headers[HTTPField.Name("x-interlock-parent-run-id")!])
        context.caller = caller
        context.logger[metadataKey: "interlock.agent.id"] = .string(caller.agent.id)
        // Which key or token was used (ids, never the secret): what an operator needs to revoke it.
        switch caller.credential {
        case .apiKey(let id): context.logger[metadataKey: "interlock.credential"] = .string("key:\(id)")
        case .accessToken(let id): context.logger[metadataKey: "interlock.credential"] = .string("token:\(id)")
        case .workflowRun(let id): context.logger[metadataKey: "interlock.credential"] = .string("run:\(id)")
        }
        return try await next(request, context)
    }

    /// The presented key: `Authorization: Bearer KEY`, else `x-api-key: KEY`.
    static func apiKey(authorization: String?, xAPIKey: String?) -> String? {
        if let authorization {
            let parts = authorization.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]).trimmingSpaces() }
        }
        return xAPIKey?.trimmingSpaces()
    }
}

extension StringProtocol {
    func trimmingSpaces() -> String {
        var text = Substring(self)
        while text.first == " " { text.removeFirst() }
        while text.last == " " { text.removeLast() }
        return String(text)
    }
}
