/// The state of one evaluation: variable slots and the cost spent so far.
public final class CELActivation {
    var globals: [CELValue?]
    var locals: [CELValue]
    var cost = 0
    let costLimit: Int

    init(globals: [CELValue?], localCount: Int, costLimit: Int) {
        self.globals = globals
        self.locals = Array(repeating: .null, count: localCount)
        self.costLimit = costLimit
    }

    @inline(__always)
    func spend(_ amount: Int) throws(CELError) {
        cost &+= amount
        if cost > costLimit { throw CELError(.costLimitExceeded, "evaluation cost limit (\(costLimit)) exceeded") }
    }
}

/// A compiled CEL expression: parsed once, names resolved to slots, constant regular
/// expressions compiled, ready to evaluate many times.
public struct CELProgram: Sendable {
    typealias Eval = @Sendable (CELActivation) throws(CELError) -> CELValue

    public let source: String
    public let environment: CELEnvironment
    /// Global variable names in slot order.
    public let variableNames: [String]
    let variableSlots: [String: Int]
    let localCount: Int
    let root: Eval

    /// Parses and compiles `source` against `environment`.
    public init(_ source: String, environment: CELEnvironment = CELEnvironment()) throws(CELSourceError) {
        let node = try CELParser.parse(source)
        try self.init(node, source: source, environment: environment)
    }

    public init(_ node: CELNode, source: String, environment: CELEnvironment) throws(CELSourceError) {
        self.source = source
        self.environment = environment
        let names = environment.variables.keys.sorted()
        variableNames = names
        variableSlots = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, $0) })
        var compiler = CELCompiler(environment: environment, globals: variableSlots, source: Array(source.unicodeScalars))
        root = try compiler.compile(node)
        localCount = compiler.maxLocals
    }

    /// Evaluates with variables by name; an unbound declared variable is an error only if read.
    public func evaluate(_ bindings: [String: CELValue]) throws(CELError) -> CELValue {
        var globals = [CELValue?](repeating: nil, count: variableNames.count)
        for (name, value) in bindings {
            if let slot = variableSlots[name] { globals[slot] = value }
        }
        return try evaluate(slots: globals)
    }

    /// Evaluates with variables in `variableNames` order (no lookups by name).
    public func evaluate(slots: [CELValue?]) throws(CELError) -> CELValue {
        let activation = CELActivation(globals: slots, localCount: localCount, costLimit: environment.costLimit)
        return try root(activation)
    }

    /// The slot of a global variable, for `evaluate(slots:)`.
    public func slot(of variable: String) -> Int? { variableSlots[variable] }
}

/// Turns an expression tree into nested closures.
struct CELCompiler {
    typealias Eval = CELProgram.Eval

    let environment: CELEnvironment
    let globals: [String: Int]
    let source: [Unicode.Scalar]
    /// Comprehension variables in scope, innermost last.
    var scopes: [(name: String, slot: Int)] = []
    var nextLocal = 0
    var maxLocals = 0

    init(environment: CELEnvironment, globals: [String: Int], source: [Unicode.Scalar]) {
        self.environment = environment
        self.globals = globals
        self.source = source
    }

    func error(_ message: String, _ node: CELNode) -> CELSourceError {
        CELSourceError(message, offset: node.offset, in: source)
    }

    mutating func compile(_ node: CELNode) throws(CELSourceError) -> Eval {
        switch node.kind {
        case .literal(let value):
            return { _ in value }
        case .ident(let name):
            if let slot = local(name) { return { activation in activation.locals[slot] } }
            return try qualified(name, fields: [], node)
        case .select(let operand, let field, let testOnly):
            if !testOnly, let path = Self.path(node), local(path[0]) == nil {
                return try qualified(path[0], fields: Array(path.dropFirst()), node)
            }
            let target = try compile(operand)
            let env = environment
            if testOnly {
                return { activation throws(CELError) in try CELRuntime.has(try target(activation), field, env) }
            }
            return { activation throws(CELError) in try CELRuntime.select(try target(activation), field, env) }
        case .list(let elements):
            let items = try elements.map { (element) throws(CELSourceError) in try compile(element) }
            let count = items.count
            return { activation throws(CELError) in
                try activation.spend(count)
                var values: [CELValue] = []
                values.reserveCapacity(count)
                for item in items { values.append(try item(activation)) }
                return .list(values)
            }
        case .map(let entries):
            let compiled = try entries.map { (entry) throws(CELSourceError) in (try compile(entry.key), try compile(entry.value)) }
            return { activation throws(CELError) in
                try activation.spend(compiled.count)
                var map = CELMap()
                for (key, value) in compiled {
                    let k = try key(activation)
                    guard CELMap.isValidKey(k) else { throw CELError(.invalidArgument, "unsupported key type \(k.typeName)") }
                    guard map.insert(k, try value(activation)) else { throw CELError(.invalidArgument, "Failed with repeated key: \(CELFormat.describe(k))") }
                }
                return .map(map)
            }
        case .message(let typeName, let fields):
            return try message(typeName, fields, node)
        case .comprehension(let loop):
            return try comprehension(loop)
        case .call(let target, let function, let args):
            return try call(target, function, args, node)
        }
    }

    func local(_ name: String) -> Int? {
        scopes.last(where: { $0.name == name })?.slot
    }

    /// `a.b.c` as its parts, if the node is a chain of selections on an identifier.
    static func path(_ node: CELNode) -> [String]? {
        switch node.kind {
        case .ident(let name): [name]
        case .select(let operand, let field, false): path(operand).map { $0 + [field] }
        default: nil
        }
    }

    /// Resolves a dotted name: the longest prefix that is a declared variable (in the
    /// container), the rest field selections; else a type name.
    mutating func qualified(_ root: String, fields: [String], _ node: CELNode) throws(CELSourceError) -> Eval {
        let env = environment
        let parts = [root] + fields
        for length in stride(from: parts.count, through: 1, by: -1) {
            let name = parts.prefix(length).joined(separator: ".")
            for candidate in env.candidates(name) {
                guard let slot = globals[candidate] else { continue }
                let rest = Array(parts.dropFirst(length))
                let read: Eval = { activation throws(CELError) in
                    guard let value = activation.globals[slot] else {
                        throw CELError(.undeclaredReference, "no value bound for variable '\(candidate)'")
                    }
                    return value
                }
                if rest.isEmpty { return read }
                return { activation throws(CELError) in
                    var value = try read(activation)
                    for field in rest { value = try CELRuntime.select(value, field, env) }
                    return value
                }
            }
        }
        let full = parts.joined(separator: ".")
        if let (_, type) = env.resolveType(full) {
            let value = CELValue.type(type.runtimeName)
            return { _ in value }
        }
        let container = env.container
        let display = full.hasPrefix(".") ? String(full.dropFirst()) : full
        return { _ throws(CELError) in throw CELError(.undeclaredReference, "undeclared reference to '\(display)' (in container '\(container)')") }
    }

    mutating func message(_ typeName: String, _ fields: [(name: String, value: CELNode)], _ node: CELNode) throws(CELSourceError) -> Eval {
        guard let (name, type) = environment.resolveType(typeName) else { throw error("unknown message type '\(typeName)'", node) }
        var seen = Set<String>()
        var compiledFields: [(String, Eval)] = []
        for field in fields {
            guard seen.insert(field.name).inserted else { throw error("field '\(field.name)' is set twice", field.value) }
            compiledFields.append((field.name, try compile(field.value)))
        }
        let compiled = compiledFields
        let env = environment
        if case .message = type {
            let declared = env.messageTypes[name]!
            for field in fields where declared.fields[field.name] == nil {
                throw error("message '\(name)' has no field '\(field.name)'", field.value)
            }
            return { activation throws(CELError) in
                var values: [String: CELValue] = [:]
                for (field, eval) in compiled {
                    let value = try eval(activation)
                    let declaration = declared.fields[field]!
                    values[field] = try CELRuntime.assign(value, to: declaration, field: field)
                }
                values = values.filter { $0.value.isNullValue == false || declared.fields[$0.key]!.type == .dyn }
                return .message(CELMessage(typeName: name, fields: values))
            }
        }
        return { activation throws(CELError) in
            var values: [String: CELValue] = [:]
            for (field, eval) in compiled { values[field] = try eval(activation) }
            return try CELRuntime.wellKnown(name, values)
        }
    }

    mutating func comprehension(_ loop: CELComprehension) throws(CELSourceError) -> Eval {
        let range = try compile(loop.range)
        let accuSlot = allocate()
        let initial = try compile(loop.accuInit)
        scopes.append((loop.accuVar, accuSlot))
        let iterSlot = allocate()
        scopes.append((loop.iterVar, iterSlot))
        var iterSlot2: Int?
        if let second = loop.iterVar2 {
            let slot = allocate()
            iterSlot2 = slot
            scopes.append((second, slot))
        }
        defer {
            scopes.removeLast(loop.iterVar2 == nil ? 2 : 3)
            nextLocal -= loop.iterVar2 == nil ? 2 : 3
        }
        let second = iterSlot2
        // `all` and `exists`: an error is kept only until a deciding element is found.
        if case .call(nil, "@not_strictly_false", _) = loop.condition.kind, case .call(nil, let combine, let stepArgs) = loop.step.kind,
            combine == "_&&_" || combine == "_||_"
        {
            let predicate = try compile(stepArgs[1])
            let decisive = combine == "_||_"
            return { activation throws(CELError) in
                var firstError: CELError?
                let stopped = try CELRuntime.iterate(try range(activation), activation, iterSlot, second) { () throws(CELError) -> CELLoopStep in
                    do throws(CELError) {
                        let value = try predicate(activation)
                        guard case .bool(let b) = value else {
                            if firstError == nil { firstError = CELError.noOverload(decisive ? "_||_" : "_&&_", [value]) }
                            return .next
                        }
                        return b == decisive ? .stop : .next
                    } catch {
                        if firstError == nil { firstError = error }
                        return .next
                    }
                }
                if stopped { return .bool(decisive) }
                if let firstError { throw firstError }
                return .bool(!decisive)
            }
        }
        let condition = try compile(loop.condition)
        let result = try compile(loop.result)
        // `map` and `filter` append to the accumulator in place.
        var appendStep: (guardEval: Eval?, element: Eval)?
        switch loop.step.kind {
        case .call(nil, "@append", let args):
            appendStep = (nil, try compile(args[1]))
        case .call(nil, "_?_:_", let args):
            if case .call(nil, "@append", let inner) = args[1].kind, case .ident(let name) = args[2].kind, name == loop.accuVar {
                appendStep = (try compile(args[0]), try compile(inner[1]))
            }
        default: break
        }
        let step = try compile(loop.step)
        let alwaysTrue: Bool
        if case .literal(.bool(true)) = loop.condition.kind { alwaysTrue = true } else { alwaysTrue = false }
        if let (guardEval, element) = appendStep {
            return { activation throws(CELError) in
                let iterated = try range(activation)
                var items: [CELValue] = []
                _ = try CELRuntime.iterate(iterated, activation, iterSlot, second) { () throws(CELError) -> CELLoopStep in
                    if let guardEval {
                        let keep = try guardEval(activation)
                        guard case .bool(let b) = keep else { throw CELError.noOverload("_?_:_", [keep]) }
                        if !b { return .next }
                    }
                    items.append(try element(activation))
                    return .next
                }
                activation.locals[accuSlot] = .list(items)
                return try result(activation)
            }
        }
        return { activation throws(CELError) in
            let iterated = try range(activation)
            activation.locals[accuSlot] = try initial(activation)
            _ = try CELRuntime.iterate(iterated, activation, iterSlot, second) { () throws(CELError) -> CELLoopStep in
                if !alwaysTrue, case .bool(false) = try condition(activation) { return .stop }
                activation.locals[accuSlot] = try step(activation)
                return .next
            }
            return try result(activation)
        }
    }

    mutating func allocate() -> Int {
        let slot = nextLocal
        nextLocal += 1
        maxLocals = max(maxLocals, nextLocal)
        return slot
    }

    mutating func call(_ target: CELNode?, _ function: String, _ argNodes: [CELNode], _ node: CELNode) throws(CELSourceError) -> Eval {
        let env = environment
        switch (function, argNodes.count) {
        case ("_&&_", 2), ("_||_", 2):
            let left = try compile(argNodes[0]), right = try compile(argNodes[1])
            let decisive = function == "_||_"
            return { activation throws(CELError) in
                var leftError: CELError?
                do throws(CELError) {
                    let value = try left(activation)
                    if case .bool(let b) = value {
                        if b == decisive { return value }
                    } else {
                        leftError = CELError.noOverload(function, [value])
                    }
                } catch {
                    leftError = error
                }
                let value = try right(activation)
                guard case .bool(let b) = value else { throw leftError ?? CELError.noOverload(function, [value]) }
                if b == decisive { return value }
                if let leftError { throw leftError }
                return value
            }
        case ("_?_:_", 3):
            let condition = try compile(argNodes[0]), then = try compile(argNodes[1]), otherwise = try compile(argNodes[2])
            return { activation throws(CELError) in
                let value = try condition(activation)
                guard case .bool(let b) = value else { throw CELError.noOverload("_?_:_", [value]) }
                return b ? try then(activation) : try otherwise(activation)
            }
        case ("@not_strictly_false", 1):
            let operand = try compile(argNodes[0])
            return { activation in
                if case .bool(false)? = try? operand(activation) { return .bool(false) }
                return .bool(true)
            }
        case ("@append", 2):
            let list = try compile(argNodes[0]), element = try compile(argNodes[1])
            return { activation throws(CELError) in
                guard case .list(var items) = try list(activation) else { throw CELError.noOverload("@append", []) }
                items.append(try element(activation))
                return .list(items)
            }
        case ("@insert", 3):
            let map = try compile(argNodes[0]), key = try compile(argNodes[1]), value = try compile(argNodes[2])
            return { activation throws(CELError) in
                guard case .map(var entries) = try map(activation) else { throw CELError.noOverload("@insert", []) }
                let k = try key(activation)
                guard entries.insert(k, try value(activation)) else { throw CELError(.invalidArgument, "Failed with repeated key: \(CELFormat.describe(k))") }
                return .map(entries)
            }
        default:
            break
        }
        var compiledArgs = try argNodes.map { (arg) throws(CELSourceError) in try compile(arg) }
        if let target { compiledArgs.insert(try compile(target), at: 0) }
        // Receiver-style calls on a dotted name may name a namespaced function (`a.b.f()`).
        var library = CELLibrary.functions[function]
        var receiverCall = target != nil
        if let target, !(library?.receiver ?? false), let path = Self.path(target), local(path[0]) == nil,
            let namespaced = CELLibrary.functions[(path + [function]).joined(separator: ".")], namespaced.global
        {
            library = namespaced
            compiledArgs.removeFirst()
            receiverCall = false
        }
        let args = compiledArgs
        if target == nil, argNodes.count == 2, let binary = Self.binary(function, env) {
            let left = args[0], right = args[1]
            return { activation throws(CELError) in
                try activation.spend(1)
                return try binary(try left(activation), try right(activation))
            }
        }
        if target == nil, argNodes.count == 1, let unary = Self.unary(function) {
            let operand = args[0]
            return { activation throws(CELError) in
                try activation.spend(1)
                return try unary(try operand(activation))
            }
        }
        guard let entry = library, entry.arities.contains(args.count), receiverCall ? entry.receiver : entry.global else {
            let display = function
            return { activation throws(CELError) in
                // Arguments are still evaluated so their errors win, as in other implementations.
                for arg in args { _ = try arg(activation) }
                throw CELError(.unknownFunction, "unbound function '\(display)'")
            }
        }
        // A constant pattern is compiled once, here.
        if function == "matches", args.count == 2, case .literal(.string(let pattern)) = argNodes.last!.kind {
            let regex: CELRegex
            do throws(CELRegex.SyntaxError) {
                regex = try CELRegex(pattern)
            } catch {
                throw self.error("invalid regular expression '\(pattern)': \(error.message)", argNodes.last!)
            }
            let subject = args[0]
            return { activation throws(CELError) in
                let value = try subject(activation)
                guard case .string(let text) = value else { throw CELError.noOverload("matches", [value]) }
                try activation.spend(1 + text.utf8.count / 64)
                return .bool(regex.matches(text))
            }
        }
        let body = entry.body
        switch args.count {
        case 1:
            let a = args[0]
            return { activation throws(CELError) in
                try activation.spend(1)
                return try body([try a(activation)])
            }
        case 2:
            let a = args[0], b = args[1]
            return { activation throws(CELError) in
                try activation.spend(1)
                return try body([try a(activation), try b(activation)])
            }
        default:
            return { activation throws(CELError) in
                try activation.spend(1)
                var values: [CELValue] = []
                for arg in args { values.append(try arg(activation)) }
                return try body(values)
            }
        }
    }

    static func binary(_ function: String, _ env: CELEnvironment) -> (@Sendable (CELValue, CELValue) throws(CELError) -> CELValue)? {
        switch function {
        case "_==_": return { a, b in .bool(CELOperators.equals(a, b, env)) }
        case "_!=_": return { a, b in .bool(!CELOperators.equals(a, b, env)) }
        case "_<_": return { (a, b) throws(CELError) in .bool(try CELOperators.order(a, b, function).map { $0 < 0 } ?? false) }
        case "_<=_": return { (a, b) throws(CELError) in .bool(try CELOperators.order(a, b, function).map { $0 <= 0 } ?? false) }
        case "_>_": return { (a, b) throws(CELError) in .bool(try CELOperators.order(a, b, function).map { $0 > 0 } ?? false) }
        case "_>=_": return { (a, b) throws(CELError) in .bool(try CELOperators.order(a, b, function).map { $0 >= 0 } ?? false) }
        case "_+_": return { (a, b) throws(CELError) in try CELOperators.add(a, b) }
        case "_-_": return { (a, b) throws(CELError) in try CELOperators.subtract(a, b) }
        case "_*_": return { (a, b) throws(CELError) in try CELOperators.multiply(a, b) }
        case "_/_": return { (a, b) throws(CELError) in try CELOperators.divide(a, b) }
        case "_%_": return { (a, b) throws(CELError) in try CELOperators.modulo(a, b) }
        case "_[_]": return { (a, b) throws(CELError) in try CELOperators.index(a, b) }
        case "@in": return { (a, b) throws(CELError) in .bool(try CELOperators.contains(a, in: b, env)) }
        default: return nil
        }
    }

    static func unary(_ function: String) -> (@Sendable (CELValue) throws(CELError) -> CELValue)? {
        switch function {
        case "!_":
            return { (a) throws(CELError) in
                guard case .bool(let b) = a else { throw CELError.noOverload("!_", [a]) }
                return .bool(!b)
            }
        case "-_": return { (a) throws(CELError) in try CELOperators.negate(a) }
        default: return nil
        }
    }
}

extension CELValue {
    var isNullValue: Bool {
        if case .null = self { return true }
        return false
    }
}

extension CELProgram {
    /// Parses, type-checks and compiles `source`: every mistake found (with line and column in
    /// the expression), or the program. `resultTypes`, when given, are the types the
    /// expression may have (`dyn` always passes: its type is known only when it runs).
    public static func checked(_ source: String, environment: CELEnvironment, resultTypes: [CELType]? = nil) throws(CELCheckError) -> CELProgram {
        let node: CELNode
        do {
            node = try CELParser.parse(source)
        } catch {
            throw CELCheckError(errors: [error])
        }
        var checker = CELChecker(environment: environment)
        let type = try checker.check(node, source: source)
        if let resultTypes, type != .dyn, !resultTypes.contains(type) {
            let expected = resultTypes.map(\.description).joined(separator: " or ")
            throw CELCheckError(errors: [CELSourceError("the expression is a \(type), expected \(expected)", offset: 0, in: Array(source.unicodeScalars))])
        }
        do {
            return try CELProgram(node, source: source, environment: environment)
        } catch {
            throw CELCheckError(errors: [error])
        }
    }
}

extension CELTimestamp {
    /// RFC 3339 in UTC (`2026-01-02T03:04:05.5Z`).
    public var rfc3339: String { CELTime.format(self) }
}

extension CELDuration {
    /// Seconds with a fraction and an `s` (`1.5s`), as CEL's `string(duration)` writes it.
    public var text: String { CELTime.format(self) }
}
