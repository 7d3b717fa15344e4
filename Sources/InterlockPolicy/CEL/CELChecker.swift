/// One signature of a function: its parameter types (the receiver first for a method) and
/// result, with `.param` type parameters.
public struct CELOverload: Sendable {
    public var id: String
    /// Called as a method: `target.f(args)`.
    public var receiver: Bool
    public var params: [CELType]
    public var result: CELType

    public init(_ id: String, receiver: Bool = false, _ params: [CELType], _ result: CELType) {
        self.id = id
        self.receiver = receiver
        self.params = params
        self.result = result
    }
}

/// Every mistake the checker found in an expression.
public struct CELCheckError: Error, Sendable, CustomStringConvertible {
    public var errors: [CELSourceError]
    public var description: String { errors.map(\.description).joined(separator: "; ") }
}

/// Type-checks an expression against an environment: every identifier declared, every
/// field known, every function applied to arguments it has an overload for. Returns the
/// expression's type.
public struct CELChecker {
    public let environment: CELEnvironment
    private var substitution: [String: CELType] = [:]
    private var fresh = 0
    private var errors: [CELSourceError] = []
    private var scopes: [(name: String, type: CELType)] = []
    private var source: [Unicode.Scalar] = []

    public init(environment: CELEnvironment) {
        self.environment = environment
    }

    /// Parses and checks `text`.
    public static func check(_ text: String, environment: CELEnvironment) throws(CELCheckError) -> CELType {
        let node: CELNode
        do {
            node = try CELParser.parse(text)
        } catch {
            throw CELCheckError(errors: [error])
        }
        var checker = CELChecker(environment: environment)
        return try checker.check(node, source: text)
    }

    /// The type of `node`; throws with every error found.
    public mutating func check(_ node: CELNode, source text: String) throws(CELCheckError) -> CELType {
        source = Array(text.unicodeScalars)
        substitution = [:]
        errors = []
        let type = typeOf(node)
        guard errors.isEmpty else { throw CELCheckError(errors: errors) }
        return finalize(type)
    }

    private mutating func report(_ message: String, _ node: CELNode) {
        errors.append(CELSourceError(message, offset: node.offset, in: source))
    }

    private mutating func freshVariable() -> CELType {
        fresh += 1
        return .param("_T\(fresh)")
    }

    // MARK: Expressions

    private mutating func typeOf(_ node: CELNode) -> CELType {
        switch node.kind {
        case .literal(let value):
            switch value {
            case .null: return .null
            case .bool: return .bool
            case .int: return .int
            case .uint: return .uint
            case .double: return .double
            case .string: return .string
            case .bytes: return .bytes
            default: return .dyn
            }
        case .ident(let name):
            if let local = scopes.last(where: { $0.name == name }) { return local.type }
            return qualified([name], node)
        case .select(let operand, let field, let testOnly):
            if !testOnly, let path = CELCompiler.path(node), !scopes.contains(where: { $0.name == path[0] }) {
                return qualified(path, node)
            }
            let target = typeOf(operand)
            let fieldType = select(target, field, node)
            return testOnly ? .bool : fieldType
        case .list(let elements):
            var element: CELType?
            for item in elements {
                element = join(element, typeOf(item))
            }
            return .list(element ?? freshVariable())
        case .map(let entries):
            var key: CELType?
            var value: CELType?
            for entry in entries {
                let k = typeOf(entry.key)
                switch resolve(k) {
                case .string, .int, .uint, .bool, .dyn, .param: break
                default: report("unsupported map key type \(resolve(k))", entry.key)
                }
                key = join(key, k)
                value = join(value, typeOf(entry.value))
            }
            return .map(key ?? freshVariable(), value ?? freshVariable())
        case .message(let typeName, let fields):
            guard let (name, type) = environment.resolveType(typeName) else {
                report("undeclared reference to message type '\(typeName)'", node)
                for field in fields { _ = typeOf(field.value) }
                return .error
            }
            let declared = environment.messageTypes[name]
            for field in fields {
                let valueType = typeOf(field.value)
                if let declared {
                    guard let fieldType = declared.fields[field.name]?.type else {
                        report("undefined field '\(field.name)' in message '\(name)'", field.value)
                        continue
                    }
                    if !assignable(to: fieldType, from: valueType) {
                        report("expected type of field '\(field.name)' is '\(fieldType)' but provided type is '\(resolve(valueType))'", field.value)
                    }
                }
            }
            return type
        case .comprehension(let loop):
            let range = resolve(typeOf(loop.range))
            var first: CELType = .dyn
            var second: CELType?
            switch range {
            case .list(let element):
                (first, second) = loop.iterVar2 == nil ? (element, nil) : (.int, element)
            case .map(let key, let value):
                (first, second) = (key, value)
            case .dyn, .error, .param:
                (first, second) = (.dyn, .dyn)
            default:
                report("expression of type '\(range)' cannot be the range of a comprehension (must be list, map, or dynamic)", loop.range)
            }
            let accuType = typeOf(loop.accuInit)
            scopes.append((loop.accuVar, accuType))
            scopes.append((loop.iterVar, first))
            if let name = loop.iterVar2 { scopes.append((name, second ?? .dyn)) }
            let conditionType = typeOf(loop.condition)
            if !assignable(to: .bool, from: conditionType) { report("the loop condition must be a bool", loop.condition) }
            let stepType = typeOf(loop.step)
            if !assignable(to: accuType, from: stepType) {
                report("the loop step has type '\(resolve(stepType))', expected '\(resolve(accuType))'", loop.step)
            }
            scopes.removeLast(loop.iterVar2 == nil ? 1 : 2)
            let result = typeOf(loop.result)
            scopes.removeLast()
            return result
        case .call(let target, let function, let args):
            return call(target, function, args, node)
        }
    }

    /// A dotted name: the longest prefix that is a declared variable, then field selections;
    /// else a type name.
    private mutating func qualified(_ parts: [String], _ node: CELNode) -> CELType {
        for length in stride(from: parts.count, through: 1, by: -1) {
            let name = parts.prefix(length).joined(separator: ".")
            for candidate in environment.candidates(name) {
                guard var type = environment.variables[candidate] else { continue }
                for field in parts.dropFirst(length) { type = select(type, field, node) }
                return type
            }
        }
        let full = parts.joined(separator: ".")
        if let (_, type) = environment.resolveType(full) { return .type(type) }
        var root = node
        while case .select(let operand, _, _) = root.kind { root = operand }
        let name = parts[0].hasPrefix(".") ? String(parts[0].dropFirst()) : parts[0]
        report("undeclared reference to '\(name)'" + (environment.container.isEmpty ? "" : " (in container '\(environment.container)')"), root)
        return .error
    }

    private mutating func select(_ target: CELType, _ field: String, _ node: CELNode) -> CELType {
        switch resolve(target) {
        case .message(let name):
            guard let declared = environment.messageTypes[name] else { return .dyn }
            guard let type = declared.fields[field]?.type else {
                report("undefined field '\(field)' in message '\(name)'", node)
                return .error
            }
            return type
        case .map(let key, let value):
            if !assignable(to: key, from: .string) { report("map with '\(resolve(key))' keys does not support field selection", node) }
            return value
        case .dyn, .param, .any: return .dyn
        case .error: return .error
        case let other:
            report("type '\(other)' does not support field selection", node)
            return .error
        }
    }

    private mutating func call(_ target: CELNode?, _ function: String, _ argNodes: [CELNode], _ node: CELNode) -> CELType {
        var receiver = target != nil
        var declared = environment.functions[function] ?? CELStandardDeclarations.overloads[function]
        var targetType: CELType?
        if let target {
            // `a.b.f(x)` may call the namespaced function `a.b.f`.
            if let path = CELCompiler.path(target), !scopes.contains(where: { $0.name == path[0] }),
                let namespaced = environment.functions[(path + [function]).joined(separator: ".")]
            {
                declared = namespaced
                receiver = false
            } else {
                targetType = typeOf(target)
            }
        }
        let argTypes = (targetType.map { [$0] } ?? []) + argNodes.map { typeOf($0) }
        guard let overloads = declared else {
            report("undeclared reference to '\(function)'", node)
            return .error
        }
        if argTypes.contains(where: { resolve($0) == .error }) { return .error }
        var result: CELType?
        var matched: [String: CELType] = [:]
        var matches = 0
        let original = substitution
        for overload in overloads where overload.receiver == receiver && overload.params.count == argTypes.count {
            // Type parameters are renamed per use so two calls do not share them.
            var renames: [String: CELType] = [:]
            let params = overload.params.map { instantiate($0, &renames) }
            let resultType = instantiate(overload.result, &renames)
            let saved = substitution
            if zip(params, argTypes).allSatisfy({ assignable(to: $0, from: $1) }) {
                let concrete = substitute(resultType)
                if let previous = result, substitute(previous) != concrete {
                    result = .dyn
                } else if result == nil {
                    result = concrete
                }
                matched = substitution
                matches += 1
                substitution = saved
                continue
            }
            substitution = saved
        }
        guard let result else {
            report("found no matching overload for '\(function)' applied to '(\(argTypes.map { "\(resolve($0))" }.joined(separator: ", ")))'", node)
            return .error
        }
        // Type variables are bound only by an unambiguous match.
        substitution = matches == 1 ? matched : original
        return result
    }

    private mutating func instantiate(_ type: CELType, _ renames: inout [String: CELType]) -> CELType {
        switch type {
        case .param(let name):
            if let renamed = renames[name] { return renamed }
            let variable = freshVariable()
            renames[name] = variable
            return variable
        case .list(let element): return .list(instantiate(element, &renames))
        case .map(let key, let value): return .map(instantiate(key, &renames), instantiate(value, &renames))
        case .type(let of): return .type(instantiate(of, &renames))
        case .opaque(let name, let params): return .opaque(name, params.map { instantiate($0, &renames) })
        default: return type
        }
    }

    // MARK: Types

    /// A type with its bound variables replaced (one level).
    private func resolve(_ type: CELType) -> CELType {
        var current = type
        while case .param(let name) = current, let bound = substitution[name] { current = bound }
        return current
    }

    private func substitute(_ type: CELType) -> CELType {
        switch resolve(type) {
        case .list(let element): .list(substitute(element))
        case .map(let key, let value): .map(substitute(key), substitute(value))
        case .type(let of): .type(substitute(of))
        case .opaque(let name, let params): .opaque(name, params.map(substitute))
        case let other: other
        }
    }

    /// The final type: free type variables become `dyn`.
    private func finalize(_ type: CELType) -> CELType {
        switch substitute(type) {
        case .param: .dyn
        case .list(let element): .list(finalize(element))
        case .map(let key, let value): .map(finalize(key), finalize(value))
        case .type(let of): .type(finalize(of))
        case .opaque(let name, let params): .opaque(name, params.map(finalize))
        case let other: other
        }
    }

    private func occurs(_ name: String, in type: CELType) -> Bool {
        switch resolve(type) {
        case .param(let other): other == name
        case .list(let element): occurs(name, in: element)
        case .map(let key, let value): occurs(name, in: key) || occurs(name, in: value)
        case .type(let of): occurs(name, in: of)
        case .opaque(_, let params): params.contains { occurs(name, in: $0) }
        default: false
        }
    }

    private static func isNullable(_ type: CELType) -> Bool {
        switch type {
        case .message, .wrapper, .timestamp, .duration, .any, .null, .opaque: true
        default: false
        }
    }

    /// Whether a value of type `from` may be used where `to` is expected, binding type
    /// variables as needed.
    private mutating func assignable(to: CELType, from: CELType) -> Bool {
        let target = resolve(to)
        let source = resolve(from)
        if target == source { return true }
        switch (target, source) {
        case (.param(let name), let other), (let other, .param(let name)):
            if case .param = other {
                substitution[name] = other
                return true
            }
            if occurs(name, in: other) { return false }
            substitution[name] = other
            return true
        case (.dyn, _), (_, .dyn), (.error, _), (_, .error), (.any, _), (_, .any): return true
        case (.wrapper(let primitive), let other), (let other, .wrapper(let primitive)):
            return other == .null || assignable(to: primitive, from: other)
        case (.null, let other), (let other, .null): return Self.isNullable(other)
        case (.list(let a), .list(let b)): return assignable(to: a, from: b)
        case (.map(let ak, let av), .map(let bk, let bv)): return assignable(to: ak, from: bk) && assignable(to: av, from: bv)
        case (.type, .type): return true  // Every type value is of type `type`.
        case (.opaque(let a, let ap), .opaque(let b, let bp)):
            return a == b && ap.count == bp.count && zip(ap, bp).allSatisfy { assignable(to: $0, from: $1) }
        default: return false
        }
    }

    /// The element type of a list or map literal so far, joined with another element's type:
    /// the more general of the two, or `dyn` when they differ.
    private mutating func join(_ previous: CELType?, _ current: CELType) -> CELType {
        guard let previous else { return current }
        let saved = substitution
        if assignable(to: previous, from: current) { return mostGeneral(previous, current) }
        substitution = saved
        return .dyn
    }

    private func mostGeneral(_ a: CELType, _ b: CELType) -> CELType {
        let (x, y) = (substitute(a), substitute(b))
        switch (x, y) {
        case (.dyn, _), (.error, _): return x
        case (_, .dyn), (_, .error): return y
        case (.wrapper, _), (_, .null): return x
        case (_, .wrapper), (.null, _): return y
        case (.list(let p), .list(let q)): return .list(mostGeneral(p, q))
        case (.map(let pk, let pv), .map(let qk, let qv)): return .map(mostGeneral(pk, qk), mostGeneral(pv, qv))
        case (.opaque(let name, let p), .opaque(_, let q)) where p.count == q.count: return .opaque(name, zip(p, q).map(mostGeneral))
        default: return x
        }
    }
}

/// The signatures of CEL's standard functions, for the checker.
enum CELStandardDeclarations {
    static let overloads: [String: [CELOverload]] = {
        let a = CELType.param("A"), b = CELType.param("B")
        var table: [String: [CELOverload]] = [:]
        func add(_ name: String, receiver: Bool = false, _ params: [CELType], _ result: CELType) {
            table[name, default: []].append(CELOverload("\(name)_\(params.map(\.description).joined(separator: "_"))", receiver: receiver, params, result))
        }
        let numbers: [CELType] = [.int, .uint, .double]
        for type in numbers + [.string, .bytes] { add("_+_", [type, type], type) }
        add("_+_", [.list(a), .list(a)], .list(a))
        add("_+_", [.timestamp, .duration], .timestamp)
        add("_+_", [.duration, .timestamp], .timestamp)
        add("_+_", [.duration, .duration], .duration)
        for type in numbers { add("_-_", [type, type], type) }
        add("_-_", [.timestamp, .timestamp], .duration)
        add("_-_", [.timestamp, .duration], .timestamp)
        add("_-_", [.duration, .duration], .duration)
        for op in ["_*_", "_/_"] { for type in numbers { add(op, [type, type], type) } }
        for type: CELType in [.int, .uint] { add("_%_", [type, type], type) }
        add("-_", [.int], .int)
        add("-_", [.double], .double)
        add("!_", [.bool], .bool)
        add("_&&_", [.bool, .bool], .bool)
        add("_||_", [.bool, .bool], .bool)
        add("_?_:_", [.bool, a, a], a)
        add("@not_strictly_false", [.bool], .bool)
        add("@append", [.list(a), a], .list(a))
        add("@insert", [.map(a, b), a, b], .map(a, b))
        add("_==_", [a, a], .bool)
        add("_!=_", [a, a], .bool)
        for op in ["_<_", "_<=_", "_>_", "_>=_"] {
            for type: CELType in [.bool, .string, .bytes, .timestamp, .duration] { add(op, [type, type], .bool) }
            for x in numbers { for y in numbers { add(op, [x, y], .bool) } }
        }
        add("@in", [a, .list(a)], .bool)
        add("@in", [a, .map(a, b)], .bool)
        add("_[_]", [.list(a), .int], a)
        add("_[_]", [.map(a, b), a], b)
        for type: CELType in [.string, .bytes, .list(a), .map(a, b)] {
            add("size", [type], .int)
            add("size", receiver: true, [type], .int)
        }
        for name in ["contains", "startsWith", "endsWith", "matches"] { add(name, receiver: true, [.string, .string], .bool) }
        add("matches", [.string, .string], .bool)
        for type: CELType in [.int, .uint, .double, .string, .timestamp] { add("int", [type], .int) }
        for type: CELType in [.int, .uint, .double, .string] { add("uint", [type], .uint) }
        for type: CELType in [.int, .uint, .double, .string] { add("double", [type], .double) }
        for type: CELType in [.int, .uint, .double, .bool, .bytes, .string, .timestamp, .duration] { add("string", [type], .string) }
        for type: CELType in [.string, .bytes] { add("bytes", [type], .bytes) }
        for type: CELType in [.bool, .string] { add("bool", [type], .bool) }
        for type: CELType in [.string, .int, .timestamp] { add("timestamp", [type], .timestamp) }
        for type: CELType in [.string, .duration] { add("duration", [type], .duration) }
        add("dyn", [a], .dyn)
        add("type", [a], .type(a))
        for name in ["getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfYear", "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds"] {
            add(name, receiver: true, [.timestamp], .int)
            add(name, receiver: true, [.timestamp, .string], .int)
        }
        for name in ["getHours", "getMinutes", "getSeconds", "getMilliseconds"] { add(name, receiver: true, [.duration], .int) }
        return table
    }()
}
