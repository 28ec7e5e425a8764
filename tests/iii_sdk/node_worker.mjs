// A worker written with the official Node SDK (npm iii-sdk), unmodified: spawned by the supervisor
// with III_URL (the door's address, with this spawn's token in its query) in its environment.
import { registerWorker } from 'iii-sdk'

const iii = registerWorker(process.env.III_URL ?? 'ws://localhost:49134')

iii.registerFunction('node::greet', async (input) => ({ message: `Hello, ${input.name}!`, runtime: 'node' }))
iii.registerFunction('node::http', async (req) => ({ status_code: 202, body: { hi: req.path_params.name } }))
iii.registerTrigger({ type: 'http', function_id: 'node::http', config: { api_path: '/node/:name', http_method: 'GET' } })
iii.registerFunction('node::viaours', async (input) => iii.trigger({ function_id: 'ours::echo', payload: input }))
