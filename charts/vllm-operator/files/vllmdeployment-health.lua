-- Argo CD health check for vllm-operator.io/VllmDeployment.
--
-- Add it to argocd-cm as resource.customizations.health.vllm-operator.io_VllmDeployment
-- (see the chart's README). Argo CD passes the object as the global `obj`; the script
-- returns a table with `status` and `message`.
--
-- The status follows kstatus (observedGeneration; conditions Ready, Reconciling, Stalled,
-- plus Admitted). Checks, first match wins:
--   1. no status, or status.observedGeneration < metadata.generation
--        -> Progressing (the controller has not seen the latest spec yet)
--   2. Stalled=True                       -> Degraded (the controller gave up; its message)
--   3. spec.replicas == 0                 -> Suspended (scaled to zero on purpose)
--   4. Ready=True                         -> Healthy
--   5. Admitted=False                     -> Progressing, "waiting for GPU memory: ..."
--      (e.g. reason InsufficientGpuMemory: no node has enough free GPU memory *now*; the
--      controller keeps retrying as the agents report changes, so this is a wait, not a
--      failure. When the controller concludes it can never fit it sets Stalled=True.)
--   6. Reconciling=True                   -> Progressing (its message)
--   7. anything else (Ready=False/Unknown, no conditions yet) -> Progressing

local hs = {}

local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  if c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe this VllmDeployment"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if status.observedGeneration == nil
    or (generation ~= nil and status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller to observe the latest spec"
  return hs
end

local conditions = status.conditions

local stalled = condition(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

if obj.spec ~= nil and obj.spec.replicas == 0 then
  hs.status = "Suspended"
  hs.message = "Scaled to zero replicas"
  return hs
end

local ready = condition(conditions, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

local admitted = condition(conditions, "Admitted")
if admitted ~= nil and admitted.status == "False" then
  hs.status = "Progressing"
  hs.message = "Waiting for GPU memory: " .. describe(admitted, "not admitted yet")
  return hs
end

local reconciling = condition(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

hs.status = "Progressing"
hs.message = describe(ready, "Waiting for the VllmDeployment to become ready")
return hs
