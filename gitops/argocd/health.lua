-- Argo CD health check for slm.dev/SLMDeployment (resource.customizations.health.slm.dev_SLMDeployment).
-- Reads the kstatus conditions the operator writes (ARCHITECTURE.md section 3):
--   Healthy      Ready=True, computed for the current generation
--   Progressing  no status yet, an old generation, Reconciling=True, or Ready not yet True
--   Degraded     Stalled=True (the message says why: no tier fits, the fetch failed, ...)
--   Suspended    spec.replicas is 0 and nothing is left to do (Ready=False, reason ScaledToZero)
-- Argo CD runs this with gopher-lua (Lua 5.1); tests/gitops/ runs it with Lua 5.1 through lupa.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function text(value, fallback)
  if value == nil or value == "" then
    return fallback
  end
  return value
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "SLMDeployment is being deleted"
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = obj.status.conditions
local stalled = find(conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled.message, text(stalled.reason, "Stalled"))
  return hs
end

local reconciling = find(conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = text(reconciling.message, text(reconciling.reason, "Reconciling"))
  return hs
end

local ready = find(conditions, "Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end

-- A condition computed for an older generation says nothing about the current spec.
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Ready was computed for generation " .. tostring(ready.observedGeneration)
  return hs
end

if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text(ready.message, "Serving")
  return hs
end

if ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = text(ready.message, "Scaled to zero")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready.message, text(ready.reason, "Not ready"))
return hs
