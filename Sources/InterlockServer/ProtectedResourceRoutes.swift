import HTTPTypes
import Hummingbird
import InterlockCore
import NIOCore

/// The agent-facing API as an OAuth protected resource: its metadata (RFC 9728) at
/// `/.well-known/oauth-protected-resource`, which every 401 names in `resource_metadata`, so
/// a client that has no token learns where to get one (the MCP authorization flow).
struct ProtectedResourceRoutes {
    static let metadataPath = "/.well-known/oauth-protected-resource"

    let settings: AuthSettings
    /// The scopes a token can carry here (`model:<alias>` per alias).
    let scopes: [String]

    func addRoutes(to router: Router<InterlockRequestContext>) {
        router.get(RouterPath(Self.metadataPath)) { request, _ in
            let base = PublicURL.base(configured: settings.publicURL, authority: request.head.authority)
            // An issuer that is a URL is its own authorization-server identifier; otherwise
            // Interlock's discovery documents are found under the resource's own base.
            let server = settings.issuer.hasPrefix("https://") || settings.issuer.hasPrefix("http://") ? settings.issuer : base
            let document: JSONValue = [
                "resource": .string(base), "authorization_servers": [.string(server)], "jwks_uri": .string(base + "/.well-known/jwks.json"),
                "bearer_methods_supported": ["header"], "resource_signing_alg_values_supported": ["ES256"],
                "scopes_supported": .array(scopes.map(JSONValue.string)), "resource_name": "Interlock",
            ]
            return Response(
                status: .ok, headers: [.contentType: "application/json", .cacheControl: "max-age=300"],
                body: .init(byteBuffer: ByteBuffer(bytes: JSONWriter.bytes(document))))
        }
    }
}

/// Where clients reach this server: `auth.public_url` when configured, otherwise the
/// request's own `Host` over plain HTTP (Interlock serves HTTP; a TLS proxy in front should
/// set `auth.public_url`).
enum PublicURL {
    static func base(configured: String?, authority: String?) -> String {
        configured ?? "http://" + (authority ?? "localhost")
    }
}
