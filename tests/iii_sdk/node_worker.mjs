// A worker written with the official Node SDK (npm iii-sdk), unmodified API: the supervisor
// spawns it from `[workers.node] command`, with III_URL (carrying its spawn token) and
// III_WORKER_NAME in its environment.
import { registerWorker, TriggerAction } from 'iii-sdk'

const iii = registerWorker(process.env.III_URL)

iii.registerFunction('node::double', async (input) => ({ n: input.n * 2 }))

// node → ours → node: calls a function of one of our own SDK's workers
iii.registerFunction('node::chain', async (input) => {
  const plus = await iii.trigger({ function_id: 'ours::plus1', payload: { n: input.n } })
  return { chained: plus.n }
})

iii.registerFunction('node::fire', async () => {
  iii.trigger({ function_id: 'ours::sink', payload: { from: 'node-void' }, action: TriggerAction.Void() })
  const receipt = await iii.trigger({
    function_id: 'ours::sink', payload: { from: 'node-enqueue' }, action: TriggerAction.Enqueue({ queue: 'default' }),
  })
  return { receipt }
})

iii.registerFunction('node::hello', async (req) => ({
  status_code: 200, body: { hi: req.path_params.name, runtime: 'node' },
}))

iii.registerTrigger({ type: 'http', function_id: 'node::hello', config: { api_path: '/node/hello/:name', http_method: 'GET' } })
